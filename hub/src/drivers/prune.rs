//! Drops telemetry older than the retention (`telemetry_retention_days`), at start and hourly.

use std::sync::Arc;
use std::time::Duration;

use crate::hub::Hub;

const EVERY: Duration = Duration::from_secs(3600);

pub async fn run(hub: Arc<Hub>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        match hub.telemetry.prune(crate::now()) {
            Ok((0, 0)) => {}
            Ok((markers, aggregates)) => {
                tracing::info!(markers, aggregates, "pruned telemetry past the retention")
            }
            Err(error) => tracing::warn!(%error, "telemetry pruning failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}
