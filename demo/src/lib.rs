//! `edgefleet-demo`: the closed loop on one machine, accelerated. An embedded hub, a fleet of
//! shops (real agents in this process, and simulated ones from the fleet simulator), and a
//! deterministic food-demand generator driving the real shops' inference traffic and, a day
//! later, the true demand. Part way through, fuel prices jump:
//! the devices' sketches drift from the model's training reference and its error grows; the
//! hub notices, retrains on the ground truth the shops captured, checks the candidate against
//! the champion on rows it never saw, signs it and rolls it out in waves; the error recovers.
//! The demo prints each step as it happens, with its figures, and a summary.
//!
//! - [`shop`]: the generator;
//! - [`fleet`]: keys, the hub, the agents, the simulated shops;
//! - [`scenario`]: the model, the policies, the traffic, the timeline and the summary;
//! - [`chart`]: the MAE curve as a PNG.
#![forbid(unsafe_code)]

pub mod chart;
pub mod fleet;
pub mod scenario;
pub mod shop;

use std::path::PathBuf;

pub use scenario::{Summary, run};

/// The demo's settings; the defaults run it in about a minute.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "edgefleet-demo",
    version,
    about = "The closed loop on this machine: a hub, a fleet of shops, a fuel-price shock, and the \
             retraining, signing and staged rollout that follow, printed as they happen."
)]
pub struct DemoConfig {
    /// Shops (real agents, each on its own loopback port).
    #[arg(long, default_value_t = 3)]
    pub shops: usize,
    /// Simulated shops beside them (the fleet simulator, in this process): they enroll, drift,
    /// report simulated ground truth and take part in the rollout's waves like the real ones.
    #[arg(long, default_value_t = 20)]
    pub sim_shops: usize,
    /// Wall-clock milliseconds per simulated day.
    #[arg(long, default_value_t = 500)]
    pub day_ms: u64,
    /// Products each real shop predicts each day (rows per request).
    #[arg(long, default_value_t = 40)]
    pub products: usize,
    /// The day fuel prices jump from 1.4–1.8 to 2.2–2.6.
    #[arg(long, default_value_t = 20)]
    pub shock_day: u64,
    /// Give up (exit 1) if the loop has not closed by this day.
    #[arg(long, default_value_t = 400)]
    pub max_days: u64,
    /// Days the fleet runs on the new version before the summary.
    #[arg(long, default_value_t = 10)]
    pub settle_days: u64,
    /// The devices' telemetry window, in seconds.
    #[arg(long, default_value_t = 2)]
    pub window_secs: u64,
    /// The trainer the hub runs (default: edgefleet-train beside this program, else on PATH).
    #[arg(long)]
    pub trainer: Option<PathBuf>,
    /// Where the MAE curve (mae.csv, mae.png), the summary (summary.json) and the new
    /// version's lineage (lineage.json) go.
    #[arg(long, default_value = "edgefleet-demo-out")]
    pub out: PathBuf,
    /// Keep the hub and the shops running after the summary, to look around (Ctrl-C ends it).
    #[arg(long)]
    pub keep: bool,
}

impl DemoConfig {
    /// Every bad setting at once.
    pub fn validate(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        if !(1..=20).contains(&self.shops) {
            errors.push("--shops: 1..=20".to_owned());
        }
        if self.sim_shops > 1000 {
            errors.push("--sim-shops: 0..=1000".to_owned());
        }
        if !(50..=60_000).contains(&self.day_ms) {
            errors.push("--day-ms: 50..=60000".to_owned());
        }
        if !(1..=1000).contains(&self.products) {
            errors.push("--products: 1..=1000".to_owned());
        }
        if self.shock_day < 5 || self.shock_day >= self.max_days {
            errors.push("--shock-day: at least 5 and before --max-days".to_owned());
        }
        if self.max_days > 100_000 {
            errors.push("--max-days: at most 100000".to_owned());
        }
        if !(1..=10_000).contains(&self.settle_days) {
            errors.push("--settle-days: 1..=10000".to_owned());
        }
        if !(1..=3600).contains(&self.window_secs) {
            errors.push("--window-secs: 1..=3600".to_owned());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// The trainer to run: as given, else beside this program, else `edgefleet-train` on PATH.
    pub fn trainer(&self) -> PathBuf {
        self.trainer.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .map(|e| e.with_file_name("edgefleet-train"))
                .filter(|p| p.is_file())
                .unwrap_or_else(|| PathBuf::from("edgefleet-train"))
        })
    }
}
