//! MQTT: the hub's side of telemetry and desired-state push. rumqttc (and rumqttd) only: what
//! arrives is handed to [`crate::telemetry`]; what is pushed is built by the domain.
//!
//! - [`broker`]: the embedded broker (rumqttd) a hub starts unless `mqtt_url` names an
//!   external one (Mosquitto, EMQX).
//! - [`connection`]: one rumqttc client, persistent session (an external broker queues
//!   telemetry while the hub is down), subscribed QoS 1 to every device's `telemetry` and
//!   `health`; publishes go to the consumer.
//! - [`consumer`]: topic → [`crate::telemetry::Message`], batches accepted by the domain, then
//!   the signed acks.
//! - [`push`]: each approved device's signed assignment bundle, retained on
//!   `edgefleet/v1/devices/{id}/assignment` (republished when desired state changes and well
//!   before the signed assignments expire), and per model version a JSON fleet report,
//!   retained on `edgefleet/v1/fleet/models/{model}/{version}/summary`.
//!
//! Topics and payloads are documented in docs/mqtt.md.

pub mod broker;
mod connection;
mod consumer;
mod push;

use std::sync::Arc;
use std::time::Duration;

use edgefleet_common::telemetry::BrokerUrl;
use rumqttc::{AsyncClient, MqttOptions, Transport};

use crate::hub::Hub;

/// Messages waiting for the consumer; beyond this the broker connection waits (and the
/// broker holds the messages).
const INGEST_QUEUE: usize = 1024;
/// Messages accepted per batch (one commit and one flush each).
pub const MAX_BATCH: usize = 256;

/// Where the hub's client connects, and the URL devices are told.
fn broker_target(config: &crate::config::HubConfig) -> anyhow::Result<(BrokerUrl, String)> {
    Ok(match &config.mqtt_url {
        Some(url) => (
            BrokerUrl::parse(url).map_err(|e| anyhow::anyhow!("mqtt_url: {e}"))?,
            url.clone(),
        ),
        None => {
            let host = if config.mqtt_listen.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                config.mqtt_listen.ip().to_string()
            };
            let target = BrokerUrl {
                host,
                port: config.mqtt_listen.port(),
                tls: false,
            };
            (target, format!("mqtt://{}", config.mqtt_listen))
        }
    })
}

fn client_options(hub: &Hub, target: &BrokerUrl, packet_limit: usize) -> MqttOptions {
    let runtime = hub.config();
    // Stable per hub (its key), so the broker keeps its session across restarts, and distinct
    // between hubs sharing a broker.
    let client_id = format!("edgefleet-hub-{}", runtime.signing_key.public().short());
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
    if let Some(user) = &runtime.config.mqtt_username {
        options.set_credentials(
            user.clone(),
            runtime.config.mqtt_password.clone().unwrap_or_default(),
        );
    }
    options
}

/// Starts the embedded broker (unless an external one is configured), connects, and spawns
/// the connection, the consumer and the push tasks. They stop when `stop` turns true.
pub async fn start(hub: Arc<Hub>, stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<()> {
    let config = hub.config().config.clone();
    // Messages up to 4× the limit reach the consumer, which counts them as oversize; the
    // embedded broker disconnects a client that sends more.
    let packet_limit = (config.max_telemetry_bytes as usize)
        .saturating_mul(4)
        .max(1024 * 1024);
    if config.mqtt_url.is_none() {
        broker::start(config.mqtt_listen, config.mqtt_v5_listen, packet_limit).await?;
    }
    let (target, broker_url) = broker_target(&config)?;
    let _ = hub.telemetry.stats().broker.set(broker_url);
    let (client, eventloop) = AsyncClient::new(client_options(&hub, &target, packet_limit), 1024);
    let (tx, rx) = tokio::sync::mpsc::channel(INGEST_QUEUE);
    let (touched_tx, touched_rx) = tokio::sync::mpsc::unbounded_channel();
    let reconnected = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(connection::run(
        hub.clone(),
        client.clone(),
        eventloop,
        tx,
        reconnected.clone(),
        stop.clone(),
    ));
    tokio::spawn(consumer::run(hub.clone(), client.clone(), rx, touched_tx));
    tokio::spawn(push::assignments(
        hub.clone(),
        client.clone(),
        reconnected,
        stop.clone(),
    ));
    tokio::spawn(push::reports(hub, client, touched_rx, stop));
    Ok(())
}
