//! The consumer: topics routed to domain messages, batches accepted by
//! [`crate::telemetry::Accept`] (committed and flushed), then the signed acks published.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use edgefleet_common::Signed;
use edgefleet_common::telemetry::{MAX_ACK_SEQS, TelemetryAck, topic};
use rumqttc::{AsyncClient, QoS};

use super::MAX_BATCH;
use crate::hub::Hub;
use crate::telemetry::Message;

/// A message as it came from the broker.
#[derive(Debug)]
pub(super) struct Incoming {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// What the topic says the message is.
fn route(m: Incoming) -> Message {
    if let Some(device) = topic::device_of(&m.topic, "telemetry") {
        Message::Record {
            device: device.to_owned(),
            payload: m.payload,
        }
    } else if let Some(device) = topic::device_of(&m.topic, "health") {
        Message::Heartbeat {
            device: device.to_owned(),
            payload: m.payload,
        }
    } else if let Some(device) = topic::device_of(&m.topic, "samples") {
        Message::Samples {
            device: device.to_owned(),
            payload: m.payload,
        }
    } else {
        Message::Unrouted {
            size: m.payload.len(),
            topic: m.topic,
        }
    }
}

pub(super) async fn run(
    hub: Arc<Hub>,
    client: AsyncClient,
    mut rx: tokio::sync::mpsc::Receiver<Incoming>,
    touched: tokio::sync::mpsc::UnboundedSender<(String, u64)>,
) {
    let mut accept = hub.telemetry.accept();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![route(first)];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(route(m)),
                Err(_) => break,
            }
        }
        let outcome = accept.batch(batch).await;
        for (device, seqs) in outcome.acks {
            for chunk in seqs.chunks(MAX_ACK_SEQS) {
                let Some(bytes) = signed_ack(&hub, &device, chunk.to_vec()) else {
                    continue;
                };
                // Never waits: the connection task may itself be waiting for this task to take
                // the next message, and only it drains the client's queue. An ack that does not
                // fit is not lost work: the device sends the record again and the duplicate is
                // acked.
                if client
                    .try_publish(topic::ack(&device), QoS::AtLeastOnce, false, bytes)
                    .is_ok()
                {
                    accept.stats().acks.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        for t in outcome.touched {
            let _ = touched.send(t);
        }
    }
}

/// The hub's signed ack of `seqs` for `device`.
fn signed_ack(hub: &Hub, device: &str, seqs: Vec<u64>) -> Option<Vec<u8>> {
    let runtime = hub.config();
    let ack = TelemetryAck {
        device_id: device.to_owned(),
        seqs,
        at: crate::now(),
    };
    Signed::sign(&ack, &runtime.signing_key, Some(runtime.delegation.clone()))
        .and_then(|s| s.to_bytes())
        .map_err(|error| tracing::error!(%error, "cannot sign a telemetry ack"))
        .ok()
}
