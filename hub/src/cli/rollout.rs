//! `edgefleet rollout …`: staged rollouts through the hub's API.

use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use edgefleet_common::name;
use serde_json::{Value, json};

use super::{Remote, parse_duration};
use crate::rollout::WaveSize;

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Roll MODEL VERSION out in waves, each judged against the devices still on the old
    /// version before the next starts; a failed gate rolls back (or pauses or halts,
    /// --on-failure).
    Create {
        /// The model's name, as pushed (`edgefleet models` lists them).
        model: String,
        /// The version to roll out; it must be pushed already.
        version: u64,
        /// Only devices with this tag (repeat for several); default every device.
        #[arg(long = "tag", conflicts_with = "devices")]
        tags: Vec<String>,
        /// Only these devices (repeat for several).
        #[arg(long = "device")]
        devices: Vec<String>,
        /// Cumulative waves: device counts or percentages, the last 100%.
        #[arg(long, default_value = "1,5%,25%,100%")]
        waves: String,
        /// How long each wave runs the new version before its gates judge it (30s, 10m, 1h);
        /// 0: the install gate alone decides.
        #[arg(long, default_value = "10m")]
        bake: String,
        /// How long an inconclusive bake may be extended (default: three bakes).
        #[arg(long)]
        max_bake: Option<String>,
        /// What a failed gate does: rollback (every moved device back on its previous
        /// version), pause (wait for an operator to resume or roll back) or halt (stop in
        /// `failed`; the moved devices keep the version; rollback stays possible).
        #[arg(long, default_value = "rollback")]
        on_failure: String,
        /// Below this many calls on either side, a metric gate is inconclusive.
        #[arg(long)]
        min_requests: Option<u64>,
        /// Largest acceptable canary p95 / baseline p95.
        #[arg(long)]
        max_p95_ratio: Option<f64>,
        /// Largest acceptable rise of the error rate (0.01 = one point).
        #[arg(long)]
        max_error_rate_increase: Option<f64>,
        /// The running rollout this one replaces.
        #[arg(long)]
        supersedes: Option<u64>,
        /// Devices move only within these daily time ranges (repeat for several): UTC
        /// (22:00-04:00), a named zone (22:00-04:00@Europe/Berlin), or each device's own zone
        /// as its agent reports it (22:00-04:00@device). A wave that passes outside them waits.
        #[arg(long = "maintenance-window", value_name = "HH:MM-HH:MM[@ZONE]",
              value_parser = |s: &str| crate::rollout::MaintenanceWindow::parse(s))]
        maintenance_windows: Vec<crate::rollout::MaintenanceWindow>,
    },
    /// Every rollout, newest last.
    List,
    /// One rollout: waves, devices (targeted, downloading, active, failed, waiting for their
    /// maintenance window), gate verdicts.
    Status {
        /// The rollout's id (`edgefleet rollout list`).
        id: u64,
        /// Redraw the waves as progress bars every second until the rollout ends.
        #[arg(long)]
        watch: bool,
    },
    /// Hold the rollout where it is.
    Pause {
        /// The rollout's id (`edgefleet rollout list`).
        id: u64,
    },
    /// Continue a paused rollout: the current wave installs and bakes again.
    Resume {
        /// The rollout's id (`edgefleet rollout list`).
        id: u64,
    },
    /// Stop it; devices keep what they have.
    Abort {
        /// The rollout's id (`edgefleet rollout list`).
        id: u64,
    },
    /// Give every device the rollout moved its previous version back (and, after a tag
    /// rollout succeeded, its tags their previous version).
    Rollback {
        /// The rollout's id (`edgefleet rollout list`).
        id: u64,
    },
    /// Every transition, with its cause (operator, gate values, timer).
    Audit {
        /// The rollout's id (`edgefleet rollout list`).
        id: u64,
    },
}

/// The JSON spec of `create`.
#[allow(clippy::too_many_arguments)]
fn spec(
    model: &str,
    version: u64,
    tags: &[String],
    devices: &[String],
    waves: &str,
    bake: &str,
    max_bake: Option<&str>,
    on_failure: &str,
) -> anyhow::Result<Value> {
    name::validate(model)?;
    let selector = match (tags.is_empty(), devices.is_empty()) {
        (true, true) => json!("all"),
        (false, _) => json!({"tags": tags}),
        (true, false) => json!({"devices": devices}),
    };
    let waves: Vec<Value> = waves
        .split(',')
        .map(|w| {
            let size = WaveSize::parse(w).map_err(|e| anyhow::anyhow!("--waves: {e}"))?;
            Ok(serde_json::to_value(size)?)
        })
        .collect::<anyhow::Result<_>>()?;
    if !matches!(on_failure, "rollback" | "pause" | "halt") {
        bail!("--on-failure must be rollback, pause or halt");
    }
    let mut spec = json!({
        "model": model,
        "version": version,
        "selector": selector,
        "waves": waves,
        "bake_secs": parse_duration(bake)?,
        "on_failure": on_failure,
    });
    if let Some(m) = max_bake {
        spec["max_bake_secs"] = json!(parse_duration(m)?);
    }
    Ok(spec)
}

pub(super) async fn run(
    r: &Remote,
    cmd: &RolloutCommand,
    json_out: bool,
) -> anyhow::Result<Option<Value>> {
    let post = |path: String, body: Option<Value>| {
        let req = r.http.post(r.url(&path));
        r.send(match body {
            Some(b) => req.json(&b),
            None => req,
        })
    };
    let value = match cmd {
        RolloutCommand::Create {
            model,
            version,
            tags,
            devices,
            waves,
            bake,
            max_bake,
            on_failure,
            min_requests,
            max_p95_ratio,
            max_error_rate_increase,
            supersedes,
            maintenance_windows,
        } => {
            let mut s = spec(
                model,
                *version,
                tags,
                devices,
                waves,
                bake,
                max_bake.as_deref(),
                on_failure,
            )?;
            let mut gates = serde_json::Map::new();
            if let Some(v) = min_requests {
                gates.insert("min_requests".into(), json!(v));
            }
            if let Some(v) = max_p95_ratio {
                gates.insert("max_p95_ratio".into(), json!(v));
            }
            if let Some(v) = max_error_rate_increase {
                gates.insert("max_error_rate_increase".into(), json!(v));
            }
            if !gates.is_empty() {
                s["gates"] = Value::Object(gates);
            }
            if let Some(id) = supersedes {
                s["supersedes"] = json!(id);
            }
            if !maintenance_windows.is_empty() {
                s["maintenance_windows"] = json!(maintenance_windows);
            }
            post("rollouts".into(), Some(s)).await?
        }
        RolloutCommand::List => {
            let v = r.send(r.http.get(r.url("rollouts"))).await?;
            if json_out {
                return Ok(Some(v));
            }
            for ro in v.as_array().into_iter().flatten() {
                println!(
                    "{:>4}  {:<20} v{:<5} {:<13} wave {}/{}",
                    ro["id"].as_u64().unwrap_or(0),
                    ro["spec"]["model"].as_str().unwrap_or("?"),
                    ro["spec"]["version"].as_u64().unwrap_or(0),
                    ro["state"].as_str().unwrap_or("?"),
                    ro["wave"].as_u64().unwrap_or(0) + 1,
                    ro["spec"]["waves"].as_array().map_or(0, Vec::len)
                );
            }
            return Ok(None);
        }
        RolloutCommand::Status { id, watch: false } => {
            let v = r.send(r.http.get(r.url(&format!("rollouts/{id}")))).await?;
            if json_out {
                return Ok(Some(v));
            }
            print!("{}", describe(&v));
            return Ok(None);
        }
        RolloutCommand::Status { id, watch: true } => {
            watch(r, *id).await?;
            return Ok(None);
        }
        RolloutCommand::Pause { id } => post(format!("rollouts/{id}/pause"), None).await?,
        RolloutCommand::Resume { id } => post(format!("rollouts/{id}/resume"), None).await?,
        RolloutCommand::Abort { id } => post(format!("rollouts/{id}/abort"), None).await?,
        RolloutCommand::Rollback { id } => post(format!("rollouts/{id}/rollback"), None).await?,
        RolloutCommand::Audit { id } => {
            r.send(r.http.get(r.url(&format!("rollouts/{id}/audit"))))
                .await?
        }
    };
    if json_out {
        return Ok(Some(value));
    }
    if value.get("progress").is_some() {
        print!("{}", describe(&value));
        return Ok(None);
    }
    Ok(Some(value))
}

fn terminal(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "rolled_back" | "aborted")
}

/// A rollout for people: its state, then one line per wave and one per gate verdict.
pub(super) fn describe(v: &Value) -> String {
    let mut out = format!(
        "rollout {}: {} v{} — {} (wave {} of {}, {} devices selected)\n",
        v["id"],
        v["spec"]["model"].as_str().unwrap_or("?"),
        v["spec"]["version"],
        v["state"].as_str().unwrap_or("?"),
        v["wave"].as_u64().unwrap_or(0) + 1,
        v["spec"]["waves"].as_array().map_or(0, Vec::len),
        v["selected"]
    );
    if let Some(reason) = v["reason"].as_str() {
        out.push_str(&format!("  reason: {reason}\n"));
    }
    for (i, p) in v["progress"].as_array().into_iter().flatten().enumerate() {
        out.push_str(&format!(
            "  wave {}: reach {:>5}  moved {:>5}  active {:>5}  installed {:>5}  downloading {:>5}  pending {:>5}  failed {:>5}  waiting {:>5}\n",
            i + 1,
            // As numbers: a JSON value ignores width and alignment.
            n(&p["reach"]),
            n(&p["targeted"]),
            n(&p["active"]),
            n(&p["installed"]),
            n(&p["downloading"]),
            n(&p["pending"]),
            p["failed"].as_array().map_or(0, Vec::len),
            n(&p["waiting"])
        ));
        for f in p["failed"].as_array().into_iter().flatten().take(5) {
            out.push_str(&format!(
                "      {}: {}\n",
                f[0].as_str().unwrap_or("?"),
                f[1].as_str().unwrap_or("?")
            ));
        }
        if let Some(w) = v["waves"].get(i) {
            for g in w["verdicts"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "      {:<13} {:<13} {}\n",
                    g["gate"].as_str().unwrap_or("?"),
                    g["outcome"].as_str().unwrap_or("?"),
                    g["detail"].as_str().unwrap_or("")
                ));
            }
        }
    }
    out
}

/// Redraws the waves as progress bars (active of targeted) with their gate verdicts.
async fn watch(r: &Remote, id: u64) -> anyhow::Result<()> {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos:>5}/{len:<5} {msg}")?
        .progress_chars("=> ");
    let header = bars.add(ProgressBar::new_spinner());
    let mut waves: Vec<ProgressBar> = Vec::new();
    loop {
        let v = r.send(r.http.get(r.url(&format!("rollouts/{id}")))).await?;
        let state = v["state"].as_str().unwrap_or("?").to_owned();
        header.set_message(format!(
            "rollout {id}: {} v{} — {state}{}",
            v["spec"]["model"].as_str().unwrap_or("?"),
            v["spec"]["version"],
            v["reason"]
                .as_str()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ));
        for (i, p) in v["progress"].as_array().into_iter().flatten().enumerate() {
            if waves.len() <= i {
                let bar = bars.add(ProgressBar::new(0));
                bar.set_style(style.clone());
                bar.set_prefix(format!("wave {}", i + 1));
                waves.push(bar);
            }
            let bar = &waves[i];
            bar.set_length(p["reach"].as_u64().unwrap_or(0));
            bar.set_position(p["active"].as_u64().unwrap_or(0));
            let verdicts: Vec<String> = v["waves"]
                .get(i)
                .and_then(|w| w["verdicts"].as_array())
                .into_iter()
                .flatten()
                .map(|g| {
                    format!(
                        "{} {}",
                        g["gate"].as_str().unwrap_or("?"),
                        g["outcome"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            let failed = p["failed"].as_array().map_or(0, Vec::len);
            bar.set_message(format!(
                "{} downloading, {failed} failed  {}",
                p["downloading"],
                verdicts.join(", ")
            ));
        }
        if terminal(&state) {
            header.finish();
            for b in &waves {
                b.finish();
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A JSON count as a number (0 when absent: a hub older than the field).
fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}
