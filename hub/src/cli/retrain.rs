//! `edgefleet retrain …`, `edgefleet jobs`, `edgefleet runs`: retraining through the hub's API.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use edgefleet_common::name;
use serde_json::{Value, json};

use super::Remote;

/// Largest policy file read.
const MAX_POLICY_FILE: u64 = 64 * 1024;

#[derive(Subcommand, Debug)]
pub enum RetrainCommand {
    /// Queue a retraining job of MODEL now (it needs a policy; one job per model at a time).
    Now {
        model: String,
        /// Why, recorded with the job and shown in its lineage.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Show MODEL's retraining policy, set it from a JSON file (--file) or remove it (--off).
    /// Keys: params (the trainer's params.json), seed, every_secs, drift, quality, cooldown_secs,
    /// retries, min_rows, holdout; docs/trainers.md describes them.
    Policy {
        model: String,
        /// A JSON file with the policy, e.g. {"params": {"model": "gbt"}, "min_rows": 500}.
        #[arg(long, conflicts_with = "off")]
        file: Option<PathBuf>,
        /// Remove the policy: no job starts for MODEL any more.
        #[arg(long)]
        off: bool,
    },
    /// Retraining jobs (every model's, or MODEL's), oldest first: why each started, its state.
    Jobs { model: Option<String> },
    /// MODEL's training runs, oldest first: dataset digest and rows, params and seed, the
    /// trainer, duration, outcome, the candidate's digest.
    Runs { model: String },
    /// Run recorded run RUN again on exactly its inputs (kept training rows, schema, params,
    /// seed, parent) and say whether the trainer made the same model bytes. Nothing is
    /// published.
    Reproduce { run: u64 },
}

pub async fn run(r: &Remote, c: &RetrainCommand, json_out: bool) -> anyhow::Result<Option<Value>> {
    match c {
        RetrainCommand::Now { model, reason } => {
            name::validate(model)?;
            let job = r
                .send(
                    r.http
                        .post(r.url(&format!("models/{model}/retrain")))
                        .json(&json!({ "reason": reason })),
                )
                .await?;
            if json_out {
                return Ok(Some(job));
            }
            println!(
                "job {} queued: retrain {model} from version {} (`edgefleet retrain jobs {model}`)",
                job["id"], job["parent"]
            );
            Ok(None)
        }
        RetrainCommand::Policy { model, file, off } => {
            name::validate(model)?;
            let url = r.url(&format!("models/{model}/retrain-policy"));
            let v = match (file, off) {
                (_, true) => r.send(r.http.delete(url)).await?,
                (Some(f), false) => {
                    let bytes = crate::keyfile::read_at_most(f, MAX_POLICY_FILE)?;
                    let policy: Value = serde_json::from_slice(&bytes)
                        .with_context(|| format!("{} is not JSON", f.display()))?;
                    r.send(r.http.put(url).json(&policy)).await?
                }
                (None, false) => r.send(r.http.get(url)).await?,
            };
            Ok(Some(v))
        }
        RetrainCommand::Jobs { model } => {
            let path = match model {
                Some(m) => {
                    name::validate(m)?;
                    format!("retrain/jobs?model={m}")
                }
                None => "retrain/jobs".to_owned(),
            };
            let v = r.send(r.http.get(r.url(&path))).await?;
            if json_out {
                return Ok(Some(v));
            }
            println!(
                "{:<5} {:<16} {:<7} {:<10} {:<9} {:<9} WHY / REASON",
                "JOB", "MODEL", "PARENT", "STATE", "ATTEMPTS", "TRIGGER"
            );
            for j in v.as_array().into_iter().flatten() {
                println!(
                    "{:<5} {:<16} {:<7} {:<10} {:<9} {:<9} {}{}",
                    j["id"],
                    j["model"].as_str().unwrap_or("?"),
                    j["parent"],
                    j["state"].as_str().unwrap_or("?"),
                    format!("{}/{}", j["attempts"], j["max_attempts"]),
                    j["trigger"]["kind"].as_str().unwrap_or("?"),
                    j["trigger"]["detail"].as_str().unwrap_or(""),
                    j["reason"]
                        .as_str()
                        .map(|r| format!(" — {r}"))
                        .unwrap_or_default(),
                );
            }
            Ok(None)
        }
        RetrainCommand::Reproduce { run } => {
            let v = r
                .send(r.http.post(r.url(&format!("retrain/runs/{run}/reproduce"))))
                .await?;
            if json_out {
                return Ok(Some(v));
            }
            let same = v["identical"].as_bool().unwrap_or(false);
            println!(
                "run {run} again: {} (recorded {}, now {}){}",
                if same {
                    "the same model bytes"
                } else {
                    "DIFFERENT model bytes"
                },
                v["recorded"]["sha256"].as_str().unwrap_or("?"),
                v["artifact"]["sha256"].as_str().unwrap_or("no model"),
                if v["same_trainer"].as_bool().unwrap_or(false) {
                    String::new()
                } else {
                    "; the trainer program is not the one the run used".to_owned()
                }
            );
            if let Some(f) = v["failure"].as_str() {
                println!(
                    "the trainer failed: {f}\n{}",
                    v["log"].as_str().unwrap_or("")
                );
            }
            if !same {
                anyhow::bail!("run {run} was not reproduced");
            }
            Ok(None)
        }
        RetrainCommand::Runs { model } => {
            name::validate(model)?;
            let v = r
                .send(r.http.get(r.url(&format!("models/{model}/runs"))))
                .await?;
            if json_out {
                return Ok(Some(v));
            }
            println!(
                "{:<5} {:<5} {:<8} {:<9} {:<8} {:<14} {:<6} {:<14} OUTCOME",
                "RUN", "JOB", "ATTEMPT", "SECONDS", "ROWS", "DATASET", "SEED", "PARAMS"
            );
            for run in v.as_array().into_iter().flatten() {
                let short = |d: &Value| {
                    d.as_str()
                        .map(|s| s.trim_start_matches("sha256:").chars().take(12).collect())
                        .unwrap_or_else(|| "-".to_owned())
                };
                let outcome = match (run["failure"].is_null(), run["artifact"].is_null()) {
                    (false, _) => format!(
                        "failed: {}",
                        run["failure"]["message"].as_str().unwrap_or("?")
                    ),
                    (true, false) => format!("model {}", short(&run["artifact"]["sha256"])),
                    (true, true) => "running".to_owned(),
                };
                let mut params = run["params"].clone();
                if let Some(o) = params.as_object_mut() {
                    o.remove("seed");
                }
                println!(
                    "{:<5} {:<5} {:<8} {:<9.1} {:<8} {:<14} {:<6} {:<14} {outcome}",
                    run["id"],
                    run["job"],
                    run["attempt"],
                    run["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                    run["dataset"]["rows"],
                    short(&run["dataset"]["sha256"]),
                    run["seed"],
                    params.to_string(),
                );
            }
            Ok(None)
        }
    }
}

/// `edgefleet approve-model MODEL VERSION [--rollout FILE]`.
pub async fn approve(
    r: &Remote,
    model: &str,
    version: u64,
    rollout: Option<&std::path::Path>,
    json_out: bool,
) -> anyhow::Result<Option<Value>> {
    name::validate(model)?;
    let body = match rollout {
        Some(f) => {
            let bytes = crate::keyfile::read_at_most(f, MAX_POLICY_FILE)?;
            let spec: Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not JSON", f.display()))?;
            json!({ "rollout": spec })
        }
        None => json!({}),
    };
    let job = r
        .send(
            r.http
                .post(r.url(&format!("models/{model}/versions/{version}/approve")))
                .json(&body),
        )
        .await?;
    if json_out {
        return Ok(Some(job));
    }
    println!(
        "{model} v{version} approved: rollout {} (`edgefleet rollout status {}`)",
        job["rollout"], job["rollout"]
    );
    Ok(None)
}

/// `edgefleet lineage MODEL VERSION`: the chain back to the first model.
pub async fn lineage(
    r: &Remote,
    model: &str,
    version: u64,
    json_out: bool,
) -> anyhow::Result<Option<Value>> {
    name::validate(model)?;
    let v = r
        .send(
            r.http
                .get(r.url(&format!("models/{model}/versions/{version}/lineage"))),
        )
        .await?;
    if json_out {
        return Ok(Some(v));
    }
    for step in v.as_array().into_iter().flatten() {
        let l = &step["lineage"];
        println!(
            "{model} v{}  created {}  signer {}…  artifact {}",
            step["version"],
            step["created_at"]
                .as_i64()
                .and_then(|t| jiff::Timestamp::from_second(t).ok())
                .map_or_else(|| step["created_at"].to_string(), |t| t.to_string()),
            step["signer"]
                .as_str()
                .unwrap_or("?")
                .chars()
                .take(16)
                .collect::<String>(),
            step["artifact_sha256"].as_str().unwrap_or("?"),
        );
        if let Some(d) = step["description"].as_str().filter(|d| !d.is_empty()) {
            println!("  {d}");
        }
        if let Some(d) = l["training_data_digest"].as_str() {
            println!("  data      {d}");
        }
        if !step["job"].is_null() {
            let j = &step["job"];
            println!(
                "  trigger   {}: {}  {}",
                j["trigger"]["kind"].as_str().unwrap_or("?"),
                j["trigger"]["detail"].as_str().unwrap_or(""),
                j["trigger"]["values"]
            );
            println!(
                "  job       {} ({}){}",
                j["id"],
                j["state"].as_str().unwrap_or("?"),
                j["release_note"]
                    .as_str()
                    .map(|n| format!(": {n}"))
                    .unwrap_or_default()
            );
        }
        if !step["run"].is_null() {
            let run = &step["run"];
            println!(
                "  run       {}: {} training rows, {} held out, seed {}, params {}, {:.1} s",
                run["id"],
                run["dataset"]["rows"],
                run["holdout"]["rows"],
                run["seed"],
                run["params"],
                run["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0
            );
            println!(
                "  trainer   {} {}",
                run["trainer"]["command"][0].as_str().unwrap_or("?"),
                run["trainer"]["program_sha256"].as_str().unwrap_or("")
            );
            if let Some(g) = run["gate"].as_object() {
                println!(
                    "  gate      {} on {} held-out rows: candidate {:.4}, champion {:.4}, margin {}",
                    g["metric"].as_str().unwrap_or("?").to_uppercase(),
                    g["rows"],
                    g["candidate"].as_f64().unwrap_or(f64::NAN),
                    g["champion"].as_f64().unwrap_or(f64::NAN),
                    g["margin"]
                );
            }
        }
        if l["metrics"].as_object().is_some_and(|m| !m.is_empty()) {
            println!("  metrics   {}", l["metrics"]);
        }
        for ro in step["rollouts"].as_array().into_iter().flatten() {
            println!(
                "  rollout   {} ({}, {} waves){}",
                ro["id"],
                ro["state"].as_str().unwrap_or("?"),
                ro["waves"],
                ro["reason"]
                    .as_str()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
        }
        match l["parent_version"].as_u64() {
            Some(p) => println!("  ↑ parent v{p}"),
            None if step["job"].is_null() => println!("  (published by hand: no recorded run)"),
            None => {}
        }
    }
    Ok(None)
}
