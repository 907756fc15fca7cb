//! The scenario: v1 trained on calm days by the reference trainer (through its job contract),
//! signed by root and assigned to every shop; sample capture and a retraining policy (drift on
//! `fuel_price`, release by a staged rollout) set as an admin would; then day after day each
//! shop predicts its products' demand and reports yesterday's truth, until the shock has been
//! noticed, the model retrained and rolled out, and the fleet has run on it for a while.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use edgefleet_common::manifest::{ArtifactRef, ModelFormat};
use edgefleet_common::{DataType, Digest, ModelManifest, Signed, TensorSpec};
use serde_json::{Value, json};

use crate::DemoConfig;
use crate::fleet::Fleet;
use crate::shop::{FEATURES, FUEL_AFTER, FUEL_BEFORE, Shop};

const MODEL: &str = "demand";

/// How long the first shop runs the new version before the gates judge it (wall seconds).
const BAKE_SECS: u64 = 5;

/// What the demo measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub shock_day: u64,
    /// Mean absolute error of the fleet's predictions (each shop's own, against the truth it
    /// reported a day later): before the shock, after it on v1, and on the new version.
    pub mae_before: f64,
    pub mae_shocked: f64,
    pub mae_after: f64,
    pub recovered: bool,
    /// Day (and wall seconds after the shock) of each step; none if it did not happen.
    pub first_drift: Option<Step>,
    pub triggered: Option<Step>,
    pub published: Option<Step>,
    pub rolled_out: Option<Step>,
    pub new_version: Option<u64>,
    pub gate: Option<Value>,
    /// Each judged wave of the rollout: its outcome and the gates' verdicts.
    pub waves: Vec<Value>,
    pub trigger: Option<Value>,
    pub days: u64,
    /// The simulated shops at the end: how many serve each version.
    pub sim_shops: BTreeMap<u64, u64>,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Step {
    pub day: u64,
    /// Days after the shock.
    pub days_after_shock: i64,
    /// Wall-clock seconds after the shock.
    pub secs_after_shock: f64,
}

/// One day of the fleet, as the demo saw it.
struct Day {
    day: u64,
    abs_error: f64,
    rows: u64,
    versions: BTreeMap<u64, usize>,
}

/// A line of the live timeline.
fn say(day: u64, line: impl AsRef<str>) {
    println!("day {day:>4}  {}", line.as_ref());
    let _ = std::io::stdout().flush();
}

/// Runs the whole demo; the summary, whether or not the loop closed.
pub async fn run(cfg: DemoConfig) -> anyhow::Result<Summary> {
    let work = tempfile::Builder::new()
        .prefix("edgefleet-demo-")
        .tempdir()?;
    let trainer = cfg.trainer();
    println!(
        "edgefleet demo: {} shops and {} simulated ones, a day every {} ms, fuel prices jump on day {}; data in {}",
        cfg.shops,
        cfg.sim_shops,
        cfg.day_ms,
        cfg.shock_day,
        work.path().display()
    );
    let fleet = Fleet::start(
        work.path(),
        trainer.clone(),
        cfg.shops,
        cfg.sim_shops,
        cfg.window_secs,
    )
    .await?;
    let outcome = drive(&cfg, &fleet, work.path(), &trainer).await;
    if cfg.keep && outcome.is_ok() {
        println!(
            "\nthe fleet keeps running (Ctrl-C ends it): hub {} (admin token {}), shops {}",
            fleet.hub_url,
            fleet.token,
            fleet
                .shops
                .iter()
                .map(|(id, url)| format!("{id} {url}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    fleet.stop().await;
    outcome
}

async fn drive(
    cfg: &DemoConfig,
    fleet: &Fleet,
    work: &Path,
    trainer: &Path,
) -> anyhow::Result<Summary> {
    say(
        0,
        "training v1 on 3,000 calm days (fuel 1.4–1.8) with the reference trainer",
    );
    let (artifact, reference) = train_v1(work, trainer).await?;
    publish_v1(fleet, &artifact, reference).await?;
    for id in fleet.shops.iter().map(|s| &s.0).chain(&fleet.sim_shops) {
        fleet
            .call(
                fleet
                    .http
                    .post(fleet.api("assignments"))
                    .json(&json!({"target": {"device": id}, "model": MODEL, "version": 1})),
            )
            .await
            .with_context(|| format!("assigning v1 to {id}"))?;
    }
    fleet
        .call(
            fleet
                .http
                .put(fleet.api(&format!("models/{MODEL}/capture")))
                .json(&json!({"rate": 1.0, "max_rows": 1000})),
        )
        .await
        .context("switching sample capture on")?;
    let policy = json!({
        // The hub holds out the newest quarter itself: the trainer fits on all it is given.
        "params": {"model": "gbt", "iterations": 300, "max_depth": 5, "validation": 0.0},
        "seed": 7,
        "min_rows": 300,
        "holdout": 0.25,
        "retries": 1,
        "cooldown_secs": 3600,
        // Four drifted windows in a row on half the shops (about 30 days after the shock): a
        // shop's demand after the shock must be in the data before a retrained model can learn
        // it (with two, the simulated shops' quick drift started the job 11 days after the
        // shock, and v2, fitted on ~500 post-shock rows, erred 25 % more than v1 had before).
        "drift": {"features": ["fuel_price"], "min_device_share": 0.5, "windows": 4, "recent_secs": 60},
        "release": "rollout",
        // One shop first, judged after a bake against the shops still on v1, then all. The
        // quality gate decides (canary MAE no worse than the baseline's, from the feedback
        // the shops report). A retrained model is meant to answer differently, so its outputs
        // are not held against it; and v2 is a bigger ensemble than v1 (300 trees of depth 5
        // against 60 of depth 4, about 4× the p95 in a debug build), so the latency gate
        // allows 10×: the shops' budget is milliseconds, not v1's microseconds.
        "rollout": {
            "waves": [{"devices": 1}, {"percent": 100.0}],
            "bake_secs": BAKE_SECS,
            // The shops' own windows are short already (--window-secs).
            "bake_window_secs": 0,
            "gates": {
                "min_requests": 4,
                "min_feedback": 80,
                "max_mae_ratio": 1.0,
                "max_p95_ratio": 10.0,
                "output_drift": false,
            },
        },
    });
    fleet
        .call(
            fleet
                .http
                .put(fleet.api(&format!("models/{MODEL}/retrain-policy")))
                .json(&policy),
        )
        .await
        .context("setting the retraining policy")?;
    say(
        0,
        format!(
            "v1 signed by root and assigned to every shop; sample capture on; retraining policy: drift on fuel_price in 4 windows in a row on ≥ 50 % of shops → gbt, seed 7, 25 % held out → staged rollout (1 shop, baked {BAKE_SECS} s and gated on its MAE against the other shops', then all)"
        ),
    );
    for (id, url) in &fleet.shops {
        wait_ready(&fleet.http, url)
            .await
            .with_context(|| format!("{id} never served v1"))?;
    }
    if let Some(sim) = &fleet.sim {
        let n = fleet.sim_shops.len() as u64;
        crate::fleet::wait_for(Duration::from_secs(60), || {
            (sim.snapshot().active(MODEL, 1) == n).then_some(())
        })
        .await
        .with_context(|| {
            format!(
                "the simulated shops never all served v1: {}",
                sim.snapshot()
            )
        })?;
    }
    say(
        0,
        format!(
            "{} shops and {} simulated shops serve v1",
            fleet.shops.len(),
            fleet.sim_shops.len()
        ),
    );

    let mut shops: Vec<Shop> = (0..fleet.shops.len())
        .map(|i| Shop::new(100 + i as u64, FUEL_BEFORE))
        .collect();
    let mut yesterday: Vec<Option<(String, Vec<f64>)>> = vec![None; fleet.shops.len()];
    let mut days: Vec<Day> = Vec::new();
    let mut summary = Summary {
        shock_day: cfg.shock_day,
        mae_before: f64::NAN,
        mae_shocked: f64::NAN,
        mae_after: f64::NAN,
        recovered: false,
        first_drift: None,
        triggered: None,
        published: None,
        rolled_out: None,
        new_version: None,
        gate: None,
        waves: Vec::new(),
        trigger: None,
        days: 0,
        sim_shops: BTreeMap::new(),
    };
    let mut watch = Watch::default();
    let mut shock_at: Option<Instant> = None;
    let mut settled_since: Option<u64> = None;
    let tick = Duration::from_millis(cfg.day_ms);
    let mut next = tokio::time::Instant::now();
    for day in 1..=cfg.max_days {
        if day == cfg.shock_day {
            for s in &mut shops {
                s.set_fuel(FUEL_AFTER);
            }
            // The simulated shops' world moves the same way.
            if let Some(sim) = &fleet.sim {
                sim.shift("fuel_price", f64::from(FUEL_AFTER.0 - FUEL_BEFORE.0));
            }
            shock_at = Some(Instant::now());
            say(day, "⚡ fuel prices jump: 1.4–1.8 → 2.2–2.6");
        }
        let mut today = Day {
            day,
            abs_error: 0.0,
            rows: 0,
            versions: BTreeMap::new(),
        };
        for (i, (id, url)) in fleet.shops.iter().enumerate() {
            // Yesterday's truth arrives today.
            if let Some((req, truth)) = yesterday[i].take() {
                let items: Vec<Value> = truth.iter().map(|t| json!([t])).collect();
                let r = fleet
                    .http
                    .post(format!("{url}/v2/models/{MODEL}/feedback"))
                    .json(&json!({"feedback": [{"id": req, "truth": items}]}))
                    .send()
                    .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, shop = %id, "feedback not delivered");
                }
            }
            let rows: Vec<([f32; 7], f64)> = (0..cfg.products).map(|_| shops[i].day()).collect();
            let req = format!("{id}-day-{day}");
            let (version, predicted) = predict(&fleet.http, url, &rows, &req).await?;
            for (p, (_, t)) in predicted.iter().zip(&rows) {
                today.abs_error += (p - t).abs();
            }
            today.rows += rows.len() as u64;
            *today.versions.entry(version).or_default() += 1;
            yesterday[i] = Some((req, rows.iter().map(|r| r.1).collect()));
        }
        let mae = today.abs_error / today.rows.max(1) as f64;
        if day % 5 == 0 || day == cfg.shock_day {
            let sim = sim_versions(fleet);
            let real: BTreeMap<u64, u64> = today
                .versions
                .iter()
                .map(|(v, n)| (*v, *n as u64))
                .collect();
            say(
                day,
                format!(
                    "fleet MAE {mae:6.2}  versions {}{}",
                    version_list(&real),
                    if sim.is_empty() {
                        String::new()
                    } else {
                        format!("  simulated {}", version_list(&sim))
                    }
                ),
            );
        }
        days.push(today);
        let step = |day: u64| Step {
            day,
            days_after_shock: day as i64 - cfg.shock_day as i64,
            secs_after_shock: shock_at.map_or(0.0, |t| t.elapsed().as_secs_f64()),
        };
        watch
            .poll(fleet, day, &mut summary, shock_at.is_some(), step)
            .await;
        let all_new = summary.new_version.is_some_and(|v| {
            days.last()
                .is_some_and(|d| d.versions.get(&v) == Some(&fleet.shops.len()))
        });
        if all_new && summary.rolled_out.is_some() {
            let since = *settled_since.get_or_insert(day);
            if day >= since + cfg.settle_days {
                summary.days = day;
                break;
            }
        }
        next += tick;
        tokio::time::sleep_until(next).await;
        summary.days = day;
    }
    summary.sim_shops = sim_versions(fleet);
    finish(cfg, &days, &mut summary, settled_since)?;
    if let Some(v) = summary.new_version {
        // Why v2 exists, kept beside the curve (the hub stops with the demo).
        let lineage = fleet
            .get(&format!("models/{MODEL}/versions/{v}/lineage"))
            .await?;
        std::fs::write(
            cfg.out.join("lineage.json"),
            serde_json::to_vec_pretty(&lineage)?,
        )?;
        println!(
            "  why v{v} exists: {} (`edgefleet lineage {MODEL} {v}` while the hub runs: --keep)",
            cfg.out.join("lineage.json").display()
        );
        println!(
            "  where to look while it runs (--keep): {0}/api/v1/models/{MODEL}/versions/{v}/lineage, {0}/api/v1/retrain/jobs, {0}/api/v1/rollouts, {0}/metrics (edgefleet_hub_model_mae)",
            fleet.hub_url
        );
    }
    Ok(summary)
}

/// `v1×3 v2×1`: how many devices serve each version.
fn version_list(versions: &BTreeMap<u64, u64>) -> String {
    versions
        .iter()
        .map(|(v, n)| format!("v{v}×{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How many simulated shops serve each version of the model now.
fn sim_versions(fleet: &Fleet) -> BTreeMap<u64, u64> {
    fleet.sim.as_ref().map_or_else(BTreeMap::new, |sim| {
        sim.snapshot()
            .active
            .into_iter()
            .filter(|((m, _), _)| m == MODEL)
            .map(|((_, v), n)| (v, n))
            .collect()
    })
}

/// What the monitor has already reported.
#[derive(Default)]
struct Watch {
    job_state: BTreeMap<u64, String>,
    rollout_state: Option<(u64, String, usize)>,
    /// Waves whose verdicts were printed.
    waves_judged: usize,
    drift_seen: bool,
}

impl Watch {
    /// Reads the hub's view and prints what changed.
    async fn poll(
        &mut self,
        fleet: &Fleet,
        day: u64,
        summary: &mut Summary,
        shocked: bool,
        step: impl Fn(u64) -> Step,
    ) {
        if shocked
            && !self.drift_seen
            && let Ok(d) = fleet.get(&format!("models/{MODEL}/versions/1/drift")).await
            && d["drifted"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c == "fuel_price"))
        {
            self.drift_seen = true;
            summary.first_drift = Some(step(day));
            let score = d["columns"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["column"] == "fuel_price"))
                .map(|c| c["score"].clone())
                .unwrap_or(Value::Null);
            say(
                day,
                format!(
                    "📈 drift: the hub sees fuel_price drift from v1's training reference (score {score}; GET /api/v1/models/{MODEL}/versions/1/drift)"
                ),
            );
        }
        let Ok(jobs) = fleet.get(&format!("retrain/jobs?model={MODEL}")).await else {
            return;
        };
        for job in jobs.as_array().into_iter().flatten() {
            let id = job["id"].as_u64().unwrap_or(0);
            let state = job["state"].as_str().unwrap_or("?").to_owned();
            // Read on every poll: the rollout may be made after the job is seen succeeded.
            if let Some(r) = job["rollout"].as_u64() {
                self.rollout_state
                    .get_or_insert((r, String::new(), usize::MAX));
            }
            if self.job_state.get(&id) == Some(&state) {
                continue;
            }
            let first = !self.job_state.contains_key(&id);
            self.job_state.insert(id, state.clone());
            if first {
                summary.triggered.get_or_insert(step(day));
                summary.trigger = Some(job["trigger"].clone());
                say(
                    day,
                    format!(
                        "🔁 retraining job {id} ({}): {}",
                        job["trigger"]["kind"].as_str().unwrap_or("?"),
                        job["trigger"]["detail"].as_str().unwrap_or("")
                    ),
                );
            }
            match state.as_str() {
                "succeeded" => {
                    let version = job["version"].as_u64();
                    summary.published.get_or_insert(step(day));
                    summary.new_version = version;
                    let run = match job["runs"].as_array().and_then(|r| r.last()) {
                        Some(r) => fleet.get(&format!("retrain/runs/{r}")).await.ok(),
                        None => None,
                    };
                    let gate = run.as_ref().map(|r| r["gate"].clone());
                    if let Some(g) = &gate {
                        say(
                            day,
                            format!(
                                "🏆 candidate beats champion on {} held-out rows: MAE {:.2} vs {:.2}; signed by the hub as v{} (`edgefleet lineage {MODEL} {}`)",
                                g["rows"],
                                g["candidate"].as_f64().unwrap_or(f64::NAN),
                                g["champion"].as_f64().unwrap_or(f64::NAN),
                                version.unwrap_or(0),
                                version.unwrap_or(0)
                            ),
                        );
                    }
                    summary.gate = gate;
                }
                "running" => say(day, format!("   job {id} running the trainer")),
                "queued" => {}
                other => say(
                    day,
                    format!(
                        "   job {id} {other}: {}",
                        job["reason"].as_str().unwrap_or("")
                    ),
                ),
            }
        }
        if let Some((id, last, wave)) = self.rollout_state.clone()
            && let Ok(r) = fleet.get(&format!("rollouts/{id}")).await
        {
            let state = r["state"].as_str().unwrap_or("?").to_owned();
            let w = r["wave"].as_u64().unwrap_or(0) as usize;
            let waves = r["spec"]["waves"].as_array().map_or(0, Vec::len);
            self.report_waves(day, id, &r, summary);
            if state != last || w != wave {
                say(
                    day,
                    format!(
                        "🚀 rollout {id}: {state}, wave {}/{waves} (`edgefleet rollout status {id}`)",
                        w + 1
                    ),
                );
                if state == "succeeded" {
                    summary.rolled_out.get_or_insert(step(day));
                }
                self.rollout_state = Some((id, state, w));
            }
        }
    }
}

impl Watch {
    /// Prints each wave's gate verdicts once the wave is judged.
    fn report_waves(&mut self, day: u64, id: u64, rollout: &Value, summary: &mut Summary) {
        let Some(waves) = rollout["waves"].as_array() else {
            return;
        };
        for w in waves.iter().skip(self.waves_judged) {
            let Some(outcome) = w["outcome"].as_str() else {
                break;
            };
            self.waves_judged += 1;
            let verdicts: Vec<String> = w["verdicts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| {
                    format!(
                        "{} {}: {}",
                        v["gate"].as_str().unwrap_or("?"),
                        v["outcome"].as_str().unwrap_or("?"),
                        v["detail"].as_str().unwrap_or("")
                    )
                })
                .collect();
            say(
                day,
                format!(
                    "🚦 rollout {id} wave {} judged: {outcome}{}",
                    w["index"].as_u64().unwrap_or(0) + 1,
                    verdicts
                        .iter()
                        .map(|v| format!("\n              · {v}"))
                        .collect::<String>()
                ),
            );
            summary.waves.push(w.clone());
        }
    }
}

/// The figures, the files, and the summary printed.
fn finish(
    cfg: &DemoConfig,
    days: &[Day],
    s: &mut Summary,
    settled_since: Option<u64>,
) -> anyhow::Result<()> {
    let mean = |range: &mut dyn Iterator<Item = &Day>| {
        let (e, n) = range.fold((0.0, 0u64), |(e, n), d| (e + d.abs_error, n + d.rows));
        if n == 0 { f64::NAN } else { e / n as f64 }
    };
    // Before: the calm days (after the first few); shocked: after the shock, on v1 only.
    s.mae_before = mean(&mut days.iter().filter(|d| d.day >= 3 && d.day < cfg.shock_day));
    s.mae_shocked = mean(
        &mut days
            .iter()
            .filter(|d| d.day >= cfg.shock_day && d.versions.keys().all(|&v| v == 1)),
    );
    s.mae_after = match settled_since {
        Some(since) => mean(&mut days.iter().filter(|d| d.day > since)),
        None => f64::NAN,
    };
    s.recovered = s.mae_after <= 1.1 * s.mae_before;
    std::fs::create_dir_all(&cfg.out)
        .with_context(|| format!("cannot create {}", cfg.out.display()))?;
    let mut csv = String::from("day,fuel_shock,mae,rows,versions\n");
    for d in days {
        csv += &format!(
            "{},{},{:.4},{},{}\n",
            d.day,
            u8::from(d.day >= cfg.shock_day),
            d.abs_error / d.rows.max(1) as f64,
            d.rows,
            d.versions
                .iter()
                .map(|(v, n)| format!("v{v}x{n}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    std::fs::write(cfg.out.join("mae.csv"), csv)?;
    let curve: Vec<f64> = days
        .iter()
        .map(|d| d.abs_error / d.rows.max(1) as f64)
        .collect();
    crate::chart::write(
        &cfg.out.join("mae.png"),
        &curve,
        cfg.shock_day,
        s.rolled_out.map(|r| r.day),
    )?;
    std::fs::write(
        cfg.out.join("summary.json"),
        serde_json::to_vec_pretty(&*s)?,
    )?;
    let step = |name: &str, st: &Option<Step>| match st {
        Some(st) => println!(
            "  {name:<26} day {:>4}  ({:+} days, {:.1} s after the shock)",
            st.day, st.days_after_shock, st.secs_after_shock
        ),
        None => println!("  {name:<26} did not happen"),
    };
    println!("\nsummary");
    step("fuel_price drift seen", &s.first_drift);
    step("retraining triggered", &s.triggered);
    step("new version published", &s.published);
    step("rolled out to every shop", &s.rolled_out);
    println!(
        "  fleet MAE: {:.2} before the shock, {:.2} after it on v1, {:.2} on v{} — {}",
        s.mae_before,
        s.mae_shocked,
        s.mae_after,
        s.new_version.unwrap_or(0),
        if s.recovered {
            "recovered (within 10 % of before)"
        } else {
            "NOT recovered"
        }
    );
    if !s.sim_shops.is_empty() {
        println!(
            "  simulated shops at the end: {}",
            s.sim_shops
                .iter()
                .map(|(v, n)| format!("{n} on v{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "  the MAE curve: {} ({}); the summary: {}",
        cfg.out.join("mae.png").display(),
        cfg.out.join("mae.csv").display(),
        cfg.out.join("summary.json").display()
    );
    Ok(())
}

/// Trains v1 through the trainer contract and profiles its training rows as the devices
/// profile theirs; the model and the reference profile's bytes.
async fn train_v1(work: &Path, trainer: &Path) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let job = work.join("v1");
    std::fs::create_dir_all(job.join("parent"))?;
    let mut shop = Shop::new(1, FUEL_BEFORE);
    let mut csv = format!(
        "device,version,made_at,{},predicted_y,truth_y\n",
        FEATURES.join(",")
    );
    for i in 0..3_000u64 {
        let (x, y) = shop.day();
        let cells: Vec<String> = x.iter().map(|v| f64::from(*v).to_string()).collect();
        csv += &format!("history,0,{i},{},0,{y}\n", cells.join(","));
    }
    std::fs::write(job.join("dataset.csv"), &csv)?;
    std::fs::write(
        job.join("dataset.schema.json"),
        crate::shop::table_schema().to_string(),
    )?;
    std::fs::write(
        job.join("params.json"),
        json!({"model": "gbt", "seed": 1, "iterations": 60, "max_depth": 4}).to_string(),
    )?;
    std::fs::write(job.join("parent/manifest.json"), spec().to_string())?;
    let out = tokio::process::Command::new(trainer)
        .arg(&job)
        .output()
        .await
        .with_context(|| {
            format!(
                "cannot run the trainer {} (build it: cargo build -p edgefleet-trainer, or pass --trainer)",
                trainer.display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "the trainer failed on v1: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let model = std::fs::read(job.join("model.onnx"))?;
    let columns = work.join("columns.json");
    std::fs::write(
        &columns,
        json!(
            FEATURES
                .iter()
                .map(|f| json!({"name": f}))
                .collect::<Vec<_>>()
        )
        .to_string(),
    )?;
    let profile = edgefleet_hub::reference::profile_csv(
        &job.join("dataset.csv"),
        Some(&columns),
        edgefleet_common::sketch::DEFAULT_K,
    )?;
    Ok((model, profile.to_bytes()))
}

/// The model's tensors, as a spec file says them.
fn spec() -> Value {
    json!({
        "name": MODEL, "version": 1,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 7], "feature_names": FEATURES}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
    })
}

async fn publish_v1(fleet: &Fleet, artifact: &[u8], reference: Vec<u8>) -> anyhow::Result<()> {
    let digest = Digest::of(artifact);
    fleet
        .call(
            fleet
                .http
                .put(fleet.api(&format!("blobs/{digest}")))
                .body(artifact.to_vec()),
        )
        .await
        .context("uploading v1")?;
    let tensor = |name: &str, shape: Vec<i64>, features: &[&str]| TensorSpec {
        name: name.into(),
        datatype: DataType::Fp32,
        shape,
        feature_names: features.iter().map(|f| (*f).to_owned()).collect(),
    };
    let manifest = ModelManifest {
        name: MODEL.into(),
        version: 1,
        artifact: ArtifactRef {
            sha256: digest,
            size: artifact.len() as u64,
            format: ModelFormat::Onnx,
        },
        inputs: vec![tensor("x", vec![-1, 7], &FEATURES)],
        outputs: vec![tensor("y", vec![-1, 1], &[])],
        smoke_tests: vec![],
        created_at: edgefleet_hub::now(),
        lineage: Default::default(),
        reference_profile: Some(reference),
        description: "trained on 3,000 calm days (fuel 1.4–1.8)".into(),
    };
    let signed = Signed::sign(&manifest, &fleet.root, None)?;
    fleet
        .call(
            fleet
                .http
                .post(fleet.api("models"))
                .body(signed.to_bytes()?),
        )
        .await
        .context("publishing v1")?;
    Ok(())
}

async fn wait_ready(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http
            .get(format!("{url}/v2/models/{MODEL}/ready"))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not ready after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One shop's request for its products: the version that answered and one demand per row.
async fn predict(
    http: &reqwest::Client,
    url: &str,
    rows: &[([f32; 7], f64)],
    id: &str,
) -> anyhow::Result<(u64, Vec<f64>)> {
    let data: Vec<f32> = rows.iter().flat_map(|r| r.0).collect();
    let body = json!({"id": id, "inputs": [{"name": "x", "shape": [rows.len(), 7], "datatype": "FP32", "data": data}]});
    let r = http
        .post(format!("{url}/v2/models/{MODEL}/infer"))
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await?;
    if !status.is_success() {
        bail!("inference at {url}: {status} {v}");
    }
    let version = v["model_version"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("no model_version in the answer")?;
    let y = v["outputs"][0]["data"]
        .as_array()
        .context("no output data")?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    Ok((version, y))
}
