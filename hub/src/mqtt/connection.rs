//! The broker connection: subscribe on every (re)connect, hand publishes to the consumer,
//! reconnect with backoff.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgefleet_common::telemetry::topic;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};

use super::consumer::Incoming;
use crate::hub::Hub;

pub(super) async fn run(
    hub: Arc<Hub>,
    client: AsyncClient,
    mut eventloop: EventLoop,
    tx: tokio::sync::mpsc::Sender<Incoming>,
    reconnected: Arc<tokio::sync::Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let stats = hub.telemetry.stats().clone();
    let broker = stats.broker.get().cloned().unwrap_or_default();
    let mut backoff = Duration::from_millis(200);
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = stop.changed() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(200);
                stats.connected.store(true, Ordering::Release);
                tracing::info!(%broker, "hub connected to the MQTT broker");
                for t in [topic::ALL_TELEMETRY, topic::ALL_HEALTH, topic::ALL_SAMPLES] {
                    if let Err(error) = client.try_subscribe(t, QoS::AtLeastOnce) {
                        tracing::error!(%error, "cannot subscribe to {t}");
                    }
                }
                reconnected.notify_one();
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let msg = Incoming {
                    topic: p.topic,
                    payload: p.payload.to_vec(),
                };
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(error) => {
                if stats.connected.swap(false, Ordering::AcqRel) {
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
}
