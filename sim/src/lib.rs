//! The Edgefleet fleet simulator: N simulated devices in one process against a real hub and
//! MQTT broker, each running the agent's own code for what matters to the hub — enrollment and
//! sessions ([`edgefleet_agent::hub_client`]), the checks and serial policy of assignments
//! ([`edgefleet_agent::update::check`], [`edgefleet_agent::update::fetch`]), the telemetry-window
//! instruction's rule ([`edgefleet_agent::update::instruction`]), the install phase an error
//! reports and the retry backoff ([`edgefleet_agent::update::Backoff`]), window profiles
//! ([`edgefleet_agent::window`]), signed records and the outbox
//! ([`edgefleet_agent::telemetry`]) — and synthetic, seeded traffic in place of tract.
//!
//! `main` parses a [`SimConfig`] and calls [`run`]; a test starts a [`Fleet`] in-process,
//! queries its [`Snapshot`] and stops it.
#![forbid(unsafe_code)]

pub mod config;
mod device;
mod fleet;
pub mod rng;
mod shared;
pub mod traffic;

use std::future::Future;
use std::time::Duration;

pub use config::SimConfig;
pub use fleet::{Fleet, Snapshot};

/// Runs the fleet until `shutdown` resolves or `--run-secs` pass, printing a [`Snapshot`] line
/// every `--report-every` seconds and a last one at the end, which it returns.
pub async fn run(
    config: SimConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<Snapshot> {
    let report_every = config.report_every;
    let run_for = config.run_secs.map(Duration::from_secs);
    let started = tokio::time::Instant::now();
    let fleet = Fleet::start(config).await?;
    let deadline = async {
        match run_for {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let reports = async {
        if report_every == 0 {
            return std::future::pending().await;
        }
        let period = Duration::from_secs(report_every);
        let mut tick = tokio::time::interval_at(started + period, period);
        loop {
            tick.tick().await;
            println!(
                "[{:>5} s] {}",
                started.elapsed().as_secs(),
                fleet.snapshot()
            );
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = deadline => {}
        () = reports => {}
    }
    let last = fleet.stop().await;
    println!("[{:>5} s] stopped: {last}", started.elapsed().as_secs());
    Ok(last)
}
