//! Background drivers: tasks that act on their own schedule through the same domain API the
//! transports call. Each is `run(hub, stop)`; none imports a transport.
//!
//! - [`prune`]: drops telemetry past the retention, hourly.
//! - [`rollout`]: advances the staged rollouts, every second.
//! - [`retrain`]: makes scheduled retraining jobs and starts queued ones, every second.

pub mod prune;
pub mod retrain;
pub mod rollout;

use std::future::Future;
use std::time::Duration;

use crate::hub::Hub;

/// Runs `round` every `period` (a late round delays the next rather than bunching them) until
/// `stop` changes or the hub begins to shut down.
async fn every<F, Fut>(
    hub: &Hub,
    mut stop: tokio::sync::watch::Receiver<bool>,
    period: Duration,
    mut round: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if hub.is_stopping() {
            return;
        }
        round().await;
    }
}
