//! MQTT: the hub's side of telemetry and desired-state push.
//!
//! - [`broker`]: the embedded broker (rumqttd) a hub starts unless `mqtt_url` names an
//!   external one (Mosquitto, EMQX).
//! - One rumqttc client, persistent session (an external broker queues telemetry while the
//!   hub is down), subscribed QoS 1 to every device's `telemetry` and `health`.
//! - [`ingest`]: checks, stores and acks what devices send.
//! - Push: each approved device's signed assignment bundle, retained on
//!   `edgefleet/v1/devices/{id}/assignment` (republished when desired state changes and well
//!   before the signed assignments expire), and per model version a JSON fleet summary,
//!   retained on `edgefleet/v1/fleet/models/{model}/{version}/summary`.
//!
//! Topics and payloads are documented in docs/mqtt.md.

pub mod broker;
pub mod ingest;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edgefleet_common::telemetry::{BrokerUrl, topic};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};

use crate::api::SharedState;
use crate::telemetry::TelemetryStore;
pub use ingest::{IngestCounters, Rejected};

/// The running MQTT side, for the HTTP API and `/metrics`.
#[derive(Debug)]
pub struct Mqtt {
    pub counters: Arc<IngestCounters>,
    /// Where devices should connect (`mqtt://…`).
    pub broker_url: String,
    pub connected: std::sync::atomic::AtomicBool,
}

/// Messages waiting for the ingest task; beyond this the broker connection waits (and the
/// broker holds the messages).
const INGEST_QUEUE: usize = 1024;
/// Messages handled per flush.
pub const MAX_BATCH: usize = 256;

/// Starts the embedded broker (unless an external one is configured), connects, and spawns
/// the consumer and the push tasks. They stop when `stop` turns true.
pub async fn start(
    state: SharedState,
    telemetry: TelemetryStore,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Arc<Mqtt>> {
    let config = state.loaded.load().config.clone();
    let max = config.max_telemetry_bytes as usize;
    // Messages up to 4× the limit reach the consumer, which counts them as oversize; the
    // embedded broker disconnects a client that sends more.
    let packet_limit = max.saturating_mul(4).max(1024 * 1024);
    let target = match &config.mqtt_url {
        Some(url) => BrokerUrl::parse(url).map_err(|e| anyhow::anyhow!("mqtt_url: {e}"))?,
        None => {
            broker::start(config.mqtt_listen, config.mqtt_v5_listen, packet_limit).await?;
            let host = if config.mqtt_listen.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                config.mqtt_listen.ip().to_string()
            };
            BrokerUrl {
                host,
                port: config.mqtt_listen.port(),
                tls: false,
            }
        }
    };
    let broker_url = match &config.mqtt_url {
        Some(u) => u.clone(),
        None => format!("mqtt://{}", config.mqtt_listen),
    };
    // Stable per hub (its key), so the broker keeps its session across restarts, and distinct
    // between hubs sharing a broker.
    let client_id = format!(
        "edgefleet-hub-{}",
        state.loaded.load().signing_key.public().short()
    );
    let mut options = MqttOptions::new(client_id, target.host.clone(), target.port);
    options
        .set_clean_session(false)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(packet_limit + 4096, packet_limit + 4096)
        .set_inflight(200);
    if target.tls {
        crate::install_crypto_provider();
        options.set_transport(Transport::tls_with_default_config());
    }
    if let Some(user) = &config.mqtt_username {
        options.set_credentials(
            user.clone(),
            config.mqtt_password.clone().unwrap_or_default(),
        );
    }
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    let counters = Arc::new(IngestCounters::default());
    let mqtt = Arc::new(Mqtt {
        counters: counters.clone(),
        broker_url,
        connected: Default::default(),
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<ingest::Incoming>(INGEST_QUEUE);
    let (summaries_tx, summaries_rx) = tokio::sync::mpsc::unbounded_channel::<(String, u64)>();
    let reconnected = Arc::new(tokio::sync::Notify::new());

    // The connection: subscribe on every (re)connect, hand publishes to the consumer.
    {
        let (client, mqtt, reconnected) = (client.clone(), mqtt.clone(), reconnected.clone());
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                let event = tokio::select! {
                    e = eventloop.poll() => e,
                    _ = stop.changed() => break,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff = Duration::from_millis(200);
                        mqtt.connected
                            .store(true, std::sync::atomic::Ordering::Release);
                        tracing::info!(broker = %mqtt.broker_url, "hub connected to the MQTT broker");
                        for t in [topic::ALL_TELEMETRY, topic::ALL_HEALTH] {
                            if let Err(error) = client.try_subscribe(t, QoS::AtLeastOnce) {
                                tracing::error!(%error, "cannot subscribe to {t}");
                            }
                        }
                        reconnected.notify_one();
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let msg = ingest::Incoming {
                            topic: p.topic,
                            payload: p.payload.to_vec(),
                        };
                        if tx.send(msg).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        if mqtt
                            .connected
                            .swap(false, std::sync::atomic::Ordering::AcqRel)
                        {
                            tracing::warn!(%error, "hub lost the MQTT broker; reconnecting");
                        } else {
                            tracing::debug!(%error, "MQTT broker unreachable");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
            let _ = client.try_disconnect();
        });
    }

    // The consumer: batches, one flush per batch, then the acks.
    {
        let client = client.clone();
        let mut ingest = ingest::Ingest::new(state.clone(), telemetry.clone(), counters.clone());
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
                let outcome = ingest.batch(batch).await;
                for (device, seqs) in outcome.acks {
                    for chunk in seqs.chunks(edgefleet_common::telemetry::MAX_ACK_SEQS) {
                        let Some(bytes) = ingest.ack(&device, chunk.to_vec()) else {
                            continue;
                        };
                        // Never waits: the connection task may itself be waiting for this
                        // task to take the next message, and only it drains the client's
                        // queue. An ack that does not fit is not lost work: the device sends
                        // the record again and the duplicate is acked.
                        if client
                            .try_publish(topic::ack(&device), QoS::AtLeastOnce, false, bytes)
                            .is_ok()
                        {
                            ingest
                                .counters
                                .acks
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
                for t in outcome.touched {
                    let _ = summaries_tx.send(t);
                }
            }
        });
    }

    tokio::spawn(push_assignments(
        state.clone(),
        client.clone(),
        reconnected,
        stop.clone(),
    ));
    tokio::spawn(push_summaries(state, telemetry, client, summaries_rx, stop));
    Ok(mqtt)
}

/// Publishes each approved device's assignment bundle, retained, whenever it changed: at
/// start, on every desired-state change, after a reconnect (the broker may have lost retained
/// messages), and every quarter of the assignment lifetime (bundles are re-signed before
/// they expire).
async fn push_assignments(
    state: SharedState,
    client: AsyncClient,
    reconnected: Arc<tokio::sync::Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut changes = state.changes.subscribe();
    let mut published: HashMap<String, edgefleet_common::Digest> = HashMap::new();
    loop {
        let ttl = state.loaded.load().config.assignment_ttl_secs;
        let refresh = Duration::from_secs((ttl / 4).max(15));
        tokio::select! {
            _ = changes.changed() => {}
            _ = reconnected.notified() => published.clear(),
            _ = tokio::time::sleep(refresh) => {}
            _ = stop.changed() => return,
        }
        if state.is_stopping() {
            return;
        }
        let devices = match state.store.devices() {
            Ok(d) => d,
            Err(error) => {
                tracing::error!(%error, "cannot list devices for assignment push");
                continue;
            }
        };
        for d in devices.into_iter().filter(|d| d.approved) {
            let bytes = match crate::api::bundle_for(&state, &d)
                .and_then(|b| edgefleet_common::encoding::to_bytes(&b).map_err(Into::into))
            {
                Ok(b) => b,
                Err(error) => {
                    tracing::warn!(device = %d.id, %error, "cannot build the assignment bundle to push");
                    continue;
                }
            };
            let digest = edgefleet_common::Digest::of(&bytes);
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
}

/// Publishes the JSON fleet summary of each model version that received telemetry, at most
/// every 5 seconds per version, retained.
async fn push_summaries(
    state: SharedState,
    telemetry: TelemetryStore,
    client: AsyncClient,
    mut touched: tokio::sync::mpsc::UnboundedReceiver<(String, u64)>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut due: std::collections::BTreeSet<(String, u64)> = Default::default();
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
            let now = crate::now();
            let summary = crate::api::fleet::summary(&state, &telemetry, &model, version, now);
            let bytes = match summary.map(|s| serde_json::to_vec(&s)) {
                Ok(Ok(b)) => b,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot encode a fleet summary");
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, model, version, "cannot build a fleet summary");
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
