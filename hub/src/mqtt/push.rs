//! What the hub publishes, retained: each approved device's assignment bundle and each model
//! version's fleet report.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use edgefleet_common::Digest;
use edgefleet_common::telemetry::topic;
use rumqttc::{AsyncClient, QoS};

use crate::hub::Hub;

/// Publishes each approved device's assignment bundle, retained, whenever it changed: at
/// start, on every desired-state change, after a reconnect (the broker may have lost retained
/// messages), and every quarter of the assignment lifetime (bundles are re-signed before
/// they expire).
pub(super) async fn assignments(
    hub: Arc<Hub>,
    client: AsyncClient,
    reconnected: Arc<tokio::sync::Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut generation = hub.desired.watch_generation();
    let mut published: HashMap<String, Digest> = HashMap::new();
    loop {
        let ttl = hub.config().config.assignment_ttl_secs;
        let refresh = Duration::from_secs((ttl / 4).max(15));
        tokio::select! {
            _ = generation.changed() => {}
            _ = reconnected.notified() => published.clear(),
            _ = tokio::time::sleep(refresh) => {}
            _ = stop.changed() => return,
        }
        if hub.is_stopping() {
            return;
        }
        publish_bundles(&hub, &client, &mut published).await;
    }
}

async fn publish_bundles(hub: &Hub, client: &AsyncClient, published: &mut HashMap<String, Digest>) {
    let devices = match hub.devices.list() {
        Ok(d) => d,
        Err(error) => {
            tracing::error!(%error, "cannot list devices for assignment push");
            return;
        }
    };
    for d in devices.into_iter().filter(|d| d.approved) {
        let format = crate::desired::Desired::pushed_format(&d);
        let bytes = match hub.desired.issue_bytes(&d, format) {
            Ok(b) => b,
            Err(error) => {
                tracing::warn!(device = %d.id, %error, "cannot build the assignment bundle to push");
                continue;
            }
        };
        let digest = Digest::of(&bytes);
        if published.get(&d.id) == Some(&digest) {
            continue;
        }
        match client
            .publish(topic::assignment(&d.id), QoS::AtLeastOnce, true, bytes)
            .await
        {
            Ok(()) => {
                published.insert(d.id.clone(), digest);
            }
            Err(error) => tracing::debug!(%error, "assignment push not queued"),
        }
    }
}

/// Publishes the JSON fleet report of each model version that received telemetry, at most
/// every 5 seconds per version, retained.
pub(super) async fn reports(
    hub: Arc<Hub>,
    client: AsyncClient,
    mut touched: tokio::sync::mpsc::UnboundedReceiver<(String, u64)>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut due: BTreeSet<(String, u64)> = BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            t = touched.recv() => match t {
                Some(t) => { due.insert(t); continue; }
                None => return,
            },
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        for (model, version) in std::mem::take(&mut due) {
            let report = hub.telemetry.version_report(&model, version, crate::now());
            let bytes = match report.map(|r| serde_json::to_vec(&r)) {
                Ok(Ok(b)) => b,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot encode a fleet report");
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, model, version, "cannot build a fleet report");
                    continue;
                }
            };
            let _ = client
                .publish(
                    topic::fleet_summary(&model, version),
                    QoS::AtLeastOnce,
                    true,
                    bytes,
                )
                .await;
        }
    }
}
