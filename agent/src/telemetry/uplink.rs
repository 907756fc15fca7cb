//! The MQTT side of telemetry: one rumqttc connection (persistent session, QoS 1), a publisher
//! that drains the outbox, the window and heartbeat clocks, and the handlers for the hub's
//! acks and retained assignments.
//!
//! rumqttc's defaults do not fit here and are changed: the session is persistent
//! (`clean_session = false`, so the broker keeps our subscriptions and queued acks across
//! reconnects), packets may be up to [`MAX_PACKET_BYTES`] each way (the 10 KiB default is
//! smaller than one record), and nothing waits on its request channel except the publisher,
//! which keeps at most [`MAX_IN_FLIGHT`] records unacknowledged at a time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgefleet_common::device::AssignmentBundle;
use edgefleet_common::telemetry::{self, BrokerUrl, TelemetryAck, topic};
use edgefleet_common::trust::{Permission, Signed};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, Transport};

use super::Telemetry;
use crate::config::AgentConfig;
use crate::update::Updater;

/// Largest MQTT packet either way: a record of up to 1 MiB plus the header, and the hub's
/// assignment bundle.
pub const MAX_PACKET_BYTES: usize = telemetry::DEFAULT_MAX_RECORD_BYTES + 64 * 1024;
/// Records published and not yet acknowledged (after a long outage the backlog goes out at
/// this pace, as acks come back).
pub const MAX_IN_FLIGHT: usize = 16;

/// Everything the uplink reads from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub broker: BrokerUrl,
    pub username: Option<String>,
    pub password: Option<String>,
    pub window: Duration,
    pub heartbeat: Duration,
    pub resend_after: Duration,
}

impl Settings {
    pub fn from_config(c: &AgentConfig) -> Result<Self, String> {
        Ok(Self {
            broker: BrokerUrl::parse(&c.mqtt_url)?,
            username: c.mqtt_username.clone(),
            password: c.mqtt_password.clone(),
            window: Duration::from_secs(c.telemetry_window_secs),
            heartbeat: Duration::from_secs(c.heartbeat_secs),
            resend_after: Duration::from_secs(c.telemetry_resend_secs),
        })
    }
}

/// What the MQTT event loop tells the publisher about the connection.
#[derive(Default)]
struct Link {
    /// Bumped at every connection: the publisher then sends everything pending again.
    connection: AtomicU64,
    /// Publishing while disconnected would only fill rumqttc's request channel.
    up: AtomicBool,
    /// Wakes the publisher: connected, or acks freed room in flight.
    wake: tokio::sync::Notify,
}

/// Runs until `shutdown` turns true, then closes the current window into the outbox (so a
/// clean stop loses nothing) and disconnects.
pub async fn run(
    telemetry: Arc<Telemetry>,
    settings: Settings,
    updater: Arc<Updater>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let options = mqtt_options(&telemetry, &settings);
    let (client, eventloop) = AsyncClient::new(options, 64);
    let link = Arc::new(Link::default());
    let (pushed, pushed_rx) = tokio::sync::watch::channel::<Option<AssignmentBundle>>(None);
    let applier = tokio::spawn(apply_pushed(updater.clone(), pushed_rx));
    let events = tokio::spawn(drive_events(
        eventloop,
        client.clone(),
        link.clone(),
        telemetry.clone(),
        updater.clone(),
        pushed,
        shutdown.clone(),
    ));
    let instructed = updater.window.watch();
    publish_until_stopped(&telemetry, &client, &link, &settings, instructed, shutdown).await;
    close_window(&telemetry);
    let _ = client.try_disconnect();
    events.abort();
    applier.abort();
}

/// The connection's options: a persistent session, packets up to [`MAX_PACKET_BYTES`], TLS
/// and credentials as configured, and a signed offline heartbeat as the last will.
fn mqtt_options(telemetry: &Telemetry, settings: &Settings) -> MqttOptions {
    let id = &telemetry.device_id;
    let mut options = MqttOptions::new(
        format!("edgefleet-agent-{id}"),
        settings.broker.host.clone(),
        settings.broker.port,
    );
    options
        .set_clean_session(false)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_inflight(MAX_IN_FLIGHT as u16 * 2);
    if settings.broker.tls {
        crate::install_crypto_provider();
        options.set_transport(Transport::tls_with_default_config());
    }
    if let Some(user) = &settings.username {
        options.set_credentials(user.clone(), settings.password.clone().unwrap_or_default());
    }
    match telemetry.heartbeat(false, crate::now()) {
        Ok(will) => {
            options.set_last_will(LastWill::new(
                topic::health(id),
                will,
                QoS::AtLeastOnce,
                false,
            ));
        }
        Err(e) => tracing::warn!(error = %e, "cannot sign the last will; going without"),
    }
    options
}

/// Applies pushed bundles one at a time, each at most once in a row, until the sender is gone.
async fn apply_pushed(
    updater: Arc<Updater>,
    mut pushed_rx: tokio::sync::watch::Receiver<Option<AssignmentBundle>>,
) {
    let mut last: Option<AssignmentBundle> = None;
    while pushed_rx.changed().await.is_ok() {
        let Some(bundle) = pushed_rx.borrow_and_update().clone() else {
            continue;
        };
        if last.as_ref() == Some(&bundle) {
            continue;
        }
        if let Err(e) = updater.apply_pushed(&bundle, crate::now()).await {
            tracing::warn!(error = %e, "pushed assignment not applied; polling continues");
        }
        last = Some(bundle);
    }
}

/// Drives rumqttc's event loop until `shutdown` changes: subscribes on every connection,
/// hands publishes to [`on_publish`], and reconnects with backoff.
async fn drive_events(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    link: Arc<Link>,
    telemetry: Arc<Telemetry>,
    updater: Arc<Updater>,
    pushed: tokio::sync::watch::Sender<Option<AssignmentBundle>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(500);
    let mut was_up = false;
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = shutdown.changed() => return,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(500);
                was_up = true;
                tracing::info!(
                    session_present = ack.session_present,
                    "telemetry connected to the MQTT broker"
                );
                for t in [
                    topic::ack(&telemetry.device_id),
                    topic::assignment(&telemetry.device_id),
                ] {
                    if let Err(e) = client.try_subscribe(t, QoS::AtLeastOnce) {
                        tracing::warn!(error = %e, "cannot subscribe");
                    }
                }
                link.connection.fetch_add(1, Ordering::AcqRel);
                link.up.store(true, Ordering::Release);
                link.wake.notify_one();
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                on_publish(
                    &telemetry, &updater, &p.topic, &p.payload, &link.wake, &pushed,
                )
                .await;
            }
            Ok(_) => {}
            Err(e) => {
                link.up.store(false, Ordering::Release);
                if was_up {
                    tracing::warn!(error = %e, "telemetry lost the MQTT broker; the outbox keeps records until it is back");
                    was_up = false;
                } else {
                    tracing::debug!(error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT broker unreachable");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// The window and heartbeat clocks and the publisher, until `shutdown` changes.
async fn publish_until_stopped(
    telemetry: &Telemetry,
    client: &AsyncClient,
    link: &Link,
    settings: &Settings,
    mut instructed: tokio::sync::watch::Receiver<Option<Duration>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let id = &telemetry.device_id;
    let window_clock = |period: Duration| {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        // A late tick closes one window, not a burst of empty ones.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    };
    let period = |instructed: Option<Duration>| instructed.unwrap_or(settings.window);
    let mut window_tick = window_clock(period(*instructed.borrow_and_update()));
    let mut heartbeat_tick = tokio::time::interval(settings.heartbeat);
    heartbeat_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut publish_tick = tokio::time::interval(Duration::from_secs(1));
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    let mut seen_connection = 0;
    loop {
        tokio::select! {
            _ = window_tick.tick() => {
                close_window(telemetry);
            }
            Ok(()) = instructed.changed() => {
                // The hub asked for another window length (a rollout's bake began or
                // ended): close what was gathered so far, then keep the new rhythm.
                close_window(telemetry);
                window_tick = window_clock(period(*instructed.borrow_and_update()));
            }
            _ = heartbeat_tick.tick() => {
                if link.up.load(Ordering::Acquire) {
                    match telemetry.heartbeat(true, crate::now()) {
                        // Heartbeats are not precious: dropped if the channel is full.
                        Ok(hb) => { let _ = client.try_publish(topic::health(id), QoS::AtLeastOnce, false, hb); }
                        Err(e) => tracing::warn!(error = %e, "cannot sign a heartbeat"),
                    }
                }
            }
            _ = publish_tick.tick() => {}
            _ = link.wake.notified() => {}
            _ = shutdown.changed() => break,
        }
        let current = link.connection.load(Ordering::Acquire);
        if !link.up.load(Ordering::Acquire) {
            continue;
        }
        if current != seen_connection {
            seen_connection = current;
            sent.clear();
            // Online at once on every (re)connect: the hub hears of a new run without waiting
            // a heartbeat interval, and a will published for the previous connection is
            // overridden.
            if let Ok(hb) = telemetry.heartbeat(true, crate::now()) {
                let _ = client.try_publish(topic::health(id), QoS::AtLeastOnce, false, hb);
            }
        }
        publish_pending(telemetry, client, &mut sent, settings.resend_after).await;
    }
}

fn close_window(telemetry: &Telemetry) {
    match telemetry.close_window(crate::now()) {
        Ok(Some(seq)) => tracing::debug!(seq, "telemetry record queued"),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "telemetry window not recorded"),
    }
}

/// Publishes outbox records in sequence order: those never sent on this connection and those
/// sent longer than `resend_after` ago without an ack, keeping at most [`MAX_IN_FLIGHT`]
/// outstanding.
async fn publish_pending(
    telemetry: &Telemetry,
    client: &AsyncClient,
    sent: &mut HashMap<u64, Instant>,
    resend_after: Duration,
) {
    let pending = match telemetry.outbox.pending(0, MAX_IN_FLIGHT * 4) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the outbox");
            return;
        }
    };
    // Forget acked records.
    sent.retain(|seq, _| pending.iter().any(|(s, _)| s == seq) || telemetry.outbox.contains(*seq));
    let outstanding = sent
        .values()
        .filter(|at| at.elapsed() < resend_after)
        .count();
    let mut budget = MAX_IN_FLIGHT.saturating_sub(outstanding);
    let topic = topic::telemetry(&telemetry.device_id);
    let samples_topic = topic::samples(&telemetry.device_id);
    // Records before samples: drift telemetry never waits behind training samples.
    let (records, samples): (Vec<_>, Vec<_>) = pending
        .into_iter()
        .partition(|(_, b)| b.first() != Some(&super::outbox::SAMPLES));
    for (seq, bytes) in records.into_iter().chain(samples) {
        if budget == 0 {
            break;
        }
        if sent.get(&seq).is_some_and(|at| at.elapsed() < resend_after) {
            continue;
        }
        if let Some(at) = sent.get(&seq) {
            tracing::debug!(
                seq,
                after_secs = at.elapsed().as_secs(),
                "no ack yet; publishing again"
            );
        }
        // Never waits: a full request channel means the connection is slow or gone, and the
        // record stays in the outbox for the next round.
        let (to, payload) = match bytes.split_first() {
            Some((&super::outbox::SAMPLES, rest)) => (samples_topic.clone(), rest.to_vec()),
            _ => (topic.clone(), bytes),
        };
        if let Err(e) = client.try_publish(to, QoS::AtLeastOnce, false, payload) {
            tracing::debug!(error = %e, "publish not queued");
            return;
        }
        sent.insert(seq, Instant::now());
        budget -= 1;
    }
}

/// Acks and assignment bundles from the hub. Anything else, or anything that fails its
/// checks, is logged and ignored: the broker is not trusted.
async fn on_publish(
    telemetry: &Telemetry,
    updater: &Arc<Updater>,
    topic_name: &str,
    payload: &[u8],
    wake: &tokio::sync::Notify,
    pushed: &tokio::sync::watch::Sender<Option<AssignmentBundle>>,
) {
    let id = telemetry.device_id.as_str();
    let now = crate::now();
    if topic_name == topic::ack(id) {
        let root = updater.trust.lock().await.root.clone();
        let ack = Signed::<TelemetryAck>::from_bytes(payload)
            .and_then(|s| s.verify_hub(&root, now, Permission::Assignments));
        match ack {
            Ok(ack) if ack.device_id == id && ack.seqs.len() <= telemetry::MAX_ACK_SEQS => {
                match telemetry.outbox.ack(&ack.seqs) {
                    Ok(n) => tracing::debug!(acked = n, "hub stored telemetry"),
                    Err(e) => tracing::warn!(error = %e, "outbox ack failed"),
                }
                wake.notify_one();
            }
            Ok(ack) => {
                tracing::warn!(for_device = %ack.device_id, "ignored a telemetry ack for another device")
            }
            Err(e) => tracing::warn!(error = %e, "ignored a telemetry ack that does not verify"),
        }
    } else if topic_name == topic::assignment(id) {
        if payload.is_empty() {
            return; // A cleared retained message.
        }
        match AssignmentBundle::from_wire(payload) {
            Ok(bundle) => {
                // Applying may download a model: a single worker does it, off the event
                // loop, always on the latest bundle (older ones pushed meanwhile are skipped).
                let _ = pushed.send(Some(bundle));
            }
            Err(e) => tracing::warn!(error = %e, "ignored a malformed pushed assignment"),
        }
    } else {
        tracing::debug!(
            topic = topic_name,
            "ignored a message on an unexpected topic"
        );
    }
}
