//! One simulated device: the agent's enrollment, session, assignment checks, status reports,
//! window profiles, signed records, outbox and acks, without tract, in one task (plus the task
//! that drives its MQTT connection).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edgefleet_agent::AgentConfig;
use edgefleet_agent::error::{AgentError, AgentResult};
use edgefleet_agent::hub_client::{HubClient, Poll};
use edgefleet_agent::telemetry::{AGENT_VERSION, Contents, Outbox, model_window, pack_record};
use edgefleet_agent::update::instruction::{self, Acceptance, InForce};
use edgefleet_agent::update::{Backoff, check, fetch};
use edgefleet_agent::window::{Window, WindowRecorder};
use edgefleet_common::device::{
    AssignmentBundle, BUNDLE_FORMAT, DeviceStatus, InstallPhase, InstallStatus, ModelRef,
};
use edgefleet_common::quality::ModelQuality;
use edgefleet_common::telemetry::{self, Health, Heartbeat, TelemetryAck, topic};
use edgefleet_common::trust::Permission;
use edgefleet_common::{Assignment, ModelManifest, SecretKey, Signed, TrustRoot};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, Transport};
use sha2::Digest as _;
use tokio::sync::{mpsc, watch};

use crate::rng::Rng;
use crate::shared::Shared;
use crate::traffic::Plan;

/// Rows per window buffer: the device folds its windows every second itself.
const BUFFER_ROWS: usize = 64;
/// Records published and not yet acknowledged (the agent's `MAX_IN_FLIGHT`).
const MAX_IN_FLIGHT: usize = edgefleet_agent::telemetry::uplink::MAX_IN_FLIGHT;

/// A model version the device "serves".
struct Slot {
    version: u64,
    previous: Option<u64>,
    recorder: WindowRecorder,
    plan: Arc<Plan>,
}

/// What the MQTT event loop tells the device.
enum LinkEvent {
    Connected,
    Down,
    Publish { topic: String, payload: Vec<u8> },
}

pub(crate) struct Device {
    index: usize,
    id: String,
    tags: Vec<String>,
    key: SecretKey,
    shared: Arc<Shared>,
    hub: HubClient,
    trust: TrustRoot,
    serials: BTreeMap<String, u64>,
    active: BTreeMap<String, Slot>,
    /// Windows of versions swapped out since the last close.
    retired: Vec<(String, u64, Window)>,
    /// This window's simulated feedback, per model version.
    quality: BTreeMap<(String, u64), ModelQuality>,
    last_error: Option<String>,
    outbox: Arc<Outbox>,
    rng: Rng,
    started_at: u64,
    /// The last bundle applied (either way it came); a failed one is retried with backoff.
    last_bundle: Option<AssignmentBundle>,
    retry_at: Option<tokio::time::Instant>,
    backoff: Backoff,
    /// The hub's telemetry-window instruction in force (a rollout's bake), by the agent's rule.
    window: InForce,
    /// Where the latest assignment of each model stands, as the agent reports it.
    progress: BTreeMap<String, InstallStatus>,
}

/// The device's key: derived from the seed and its index, so a run is reproducible.
fn device_key(seed: u64, index: usize) -> SecretKey {
    let mut h = sha2::Sha256::new();
    h.update(b"edgefleet-sim device key\0");
    h.update(seed.to_be_bytes());
    h.update((index as u64).to_be_bytes());
    SecretKey::from_seed(h.finalize().into())
}

fn now() -> u64 {
    edgefleet_agent::now()
}

impl Device {
    pub(crate) fn new(shared: Arc<Shared>, index: usize) -> AgentResult<Device> {
        let c = &shared.config;
        let id = c.device_id(index);
        let key = device_key(c.seed, index);
        let agent = AgentConfig {
            device_id: id.clone(),
            tags: c.tags.clone(),
            hub_url: c.hub.clone(),
            enrollment_token: c.enroll_token.clone(),
            mqtt_url: c.mqtt.clone(),
            ..Default::default()
        };
        let hub = HubClient::with_http(&agent, key.clone(), shared.http.clone());
        let outbox = Arc::new(Outbox::shared(
            &shared.db,
            format!("{id}/").as_bytes(),
            false,
            agent.outbox_max_bytes,
        )?);
        shared
            .outboxes
            .lock()
            .map_err(|_| AgentError::Other("outbox list poisoned".into()))?
            .push(outbox.clone());
        Ok(Device {
            index,
            tags: c.tags.clone(),
            rng: Rng::derive(c.seed, "traffic", index as u64),
            trust: shared.root.clone(),
            id,
            key,
            hub,
            serials: BTreeMap::new(),
            active: BTreeMap::new(),
            retired: Vec::new(),
            quality: BTreeMap::new(),
            last_error: None,
            outbox,
            started_at: now(),
            last_bundle: None,
            retry_at: None,
            backoff: Backoff::default(),
            window: InForce::default(),
            progress: BTreeMap::new(),
            shared,
        })
    }

    /// Runs until `stop` changes: enrolls, follows assignments, serves traffic, sends
    /// telemetry; on stop closes the current window into the outbox, like the agent.
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let c = self.shared.config.clone();
        let ramp = Duration::from_secs_f64(c.ramp_secs * self.index as f64 / f64::from(c.devices));
        tokio::select! {
            _ = tokio::time::sleep(ramp) => {}
            _ = stop.changed() => return,
        }
        // Enrollment and the first bundle: the first poll enrolls and opens the session.
        let mut backoff = Duration::from_millis(500);
        let first = loop {
            let polled = {
                let _permit = self.shared.permits.acquire().await;
                self.hub.poll(now(), 0).await
            };
            match polled {
                Ok(p) => break p,
                Err(e) => {
                    tracing::debug!(device = %self.id, error = %e, "enrollment or session failed; retrying");
                    let jitter =
                        Duration::from_millis(self.rng.below(backoff.as_millis() as u64 + 1));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff + jitter) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        };
        self.shared.stats.enrolled.fetch_add(1, Ordering::Relaxed);
        if let Poll::Changed(bundle) = first {
            self.take_bundle(*bundle).await;
        }

        let (client, events, driver) = self.connect(stop.clone());
        let start = tokio::time::Instant::now();
        let phase = |rng: &mut Rng, period: Duration| {
            start + Duration::from_millis(rng.below(period.as_millis() as u64 + 1))
        };
        let second = Duration::from_secs(1);
        let mut traffic = tokio::time::interval_at(phase(&mut self.rng, second), second);
        let mut window_period = c.window();
        let mut window = tokio::time::interval_at(start + window_period, window_period);
        let hb_period = Duration::from_secs(c.heartbeat_secs);
        let mut heartbeat = tokio::time::interval_at(phase(&mut self.rng, hb_period), hb_period);
        let poll_period = Duration::from_secs(c.poll_secs);
        let mut poll = tokio::time::interval_at(phase(&mut self.rng, poll_period), poll_period);
        for t in [&mut traffic, &mut window, &mut heartbeat, &mut poll] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let mut events = events;
        let mut up = false;
        let mut sent: HashMap<u64, Instant> = HashMap::new();
        let resend_after = Duration::from_secs(c.resend_secs);
        loop {
            let retry_at = self.retry_at;
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(LinkEvent::Connected) => {
                        up = true;
                        sent.clear();
                        // Online at once on every (re)connect, as the agent does.
                        self.publish_heartbeat(&client);
                    }
                    Some(LinkEvent::Down) => up = false,
                    Some(LinkEvent::Publish { topic, payload }) => self.on_publish(&topic, &payload).await,
                    None => break,
                },
                _ = traffic.tick() => self.traffic(),
                _ = window.tick() => self.close_window(),
                _ = heartbeat.tick() => if up { self.publish_heartbeat(&client) },
                _ = poll.tick() => self.poll_fallback().await,
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {
                    self.retry_at = None;
                    if let Some(b) = self.last_bundle.clone() {
                        self.apply_and_report(&b).await;
                    }
                }
                _ = stop.changed() => break,
            }
            if up {
                self.publish_pending(&client, &mut sent, resend_after);
            }
            // The hub's window instruction, as the agent's uplink follows it: on a change,
            // close what was gathered and keep the new rhythm; an expired one ends.
            self.window.expire(now());
            let want = self
                .window
                .window_secs()
                .map_or(c.window(), Duration::from_secs);
            if want != window_period {
                self.close_window();
                window_period = want;
                window = tokio::time::interval_at(tokio::time::Instant::now() + want, want);
                window.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
        }
        self.close_window();
        let _ = client.try_disconnect();
        driver.abort();
    }

    /// The MQTT connection: the agent's options (persistent session, QoS 1, the signed
    /// offline heartbeat as last will) and a task that drives rumqttc's event loop.
    fn connect(
        &mut self,
        mut stop: watch::Receiver<bool>,
    ) -> (
        AsyncClient,
        mpsc::Receiver<LinkEvent>,
        tokio::task::JoinHandle<()>,
    ) {
        let broker = &self.shared.broker;
        let mut options = MqttOptions::new(
            format!("edgefleet-agent-{}", self.id),
            broker.host.clone(),
            broker.port,
        );
        let max = edgefleet_agent::telemetry::uplink::MAX_PACKET_BYTES;
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(max, max)
            .set_inflight(MAX_IN_FLIGHT as u16 * 2);
        if broker.tls {
            edgefleet_agent::install_crypto_provider();
            options.set_transport(Transport::tls_with_default_config());
        }
        if let Ok(will) = self.heartbeat(false) {
            options.set_last_will(LastWill::new(
                topic::health(&self.id),
                will,
                QoS::AtLeastOnce,
                false,
            ));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 32);
        let (tx, rx) = mpsc::channel(16);
        let subscriber = client.clone();
        let id = self.id.clone();
        let driver = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(500);
            loop {
                let event = tokio::select! {
                    e = eventloop.poll() => e,
                    _ = stop.changed() => return,
                };
                let forward = match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff = Duration::from_millis(500);
                        for t in [topic::ack(&id), topic::assignment(&id)] {
                            if let Err(e) = subscriber.try_subscribe(t, QoS::AtLeastOnce) {
                                tracing::warn!(device = %id, error = %e, "cannot subscribe");
                            }
                        }
                        Some(LinkEvent::Connected)
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => Some(LinkEvent::Publish {
                        topic: p.topic,
                        payload: p.payload.to_vec(),
                    }),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::debug!(device = %id, error = %e, "MQTT connection lost; reconnecting");
                        if tx.send(LinkEvent::Down).await.is_err() {
                            return;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.changed() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        None
                    }
                };
                if let Some(ev) = forward
                    && tx.send(ev).await.is_err()
                {
                    return;
                }
            }
        });
        (client, rx, driver)
    }

    /// A signed heartbeat: with health when online, without (the last will) when not.
    fn heartbeat(&mut self, online: bool) -> AgentResult<Vec<u8>> {
        let hb = Heartbeat {
            device_id: self.id.clone(),
            at: now(),
            started_at: self.started_at,
            online,
            health: online.then(|| self.health()),
            active: self.model_refs(|s| Some(s.version)),
            outbox: self.outbox.stats(),
            agent_version: AGENT_VERSION.into(),
        };
        Ok(Signed::sign(&hb, &self.key, None)?.to_bytes()?)
    }

    fn publish_heartbeat(&mut self, client: &AsyncClient) {
        match self.heartbeat(true) {
            // Heartbeats are not precious: dropped if the channel is full.
            Ok(hb) => {
                let _ = client.try_publish(topic::health(&self.id), QoS::AtLeastOnce, false, hb);
            }
            Err(e) => tracing::warn!(device = %self.id, error = %e, "cannot sign a heartbeat"),
        }
    }

    /// Synthetic machine health: a small gateway, a little busy.
    fn health(&mut self) -> Health {
        let total = 1u64 << 30;
        Health {
            cpu_percent: (5.0 + 20.0 * self.rng.f64()) as f32,
            memory_used_bytes: total / 4 + self.rng.below(total / 8),
            memory_total_bytes: total,
            disk_used_bytes: 2 << 30,
            disk_total_bytes: 8 << 30,
            uptime_secs: now().saturating_sub(self.started_at),
            temperature_celsius: Some((45.0 + 10.0 * self.rng.f64()) as f32),
        }
    }

    fn model_refs(&self, version: impl Fn(&Slot) -> Option<u64>) -> Vec<ModelRef> {
        self.active
            .iter()
            .filter_map(|(name, s)| {
                version(s).map(|v| ModelRef {
                    name: name.clone(),
                    version: v,
                })
            })
            .collect()
    }

    /// This second's requests, spread over the served models, recorded in their windows
    /// and folded (the device is its own folding task).
    fn traffic(&mut self) {
        if self.active.is_empty() {
            return;
        }
        let n = self.rng.poisson(self.shared.config.rate);
        let shifts = self.shared.shifts();
        let slots: Vec<(&String, &Slot)> = self.active.iter().collect();
        let (mut ok, mut failed, mut scored) = (0u64, 0u64, 0u64);
        for _ in 0..n {
            let (model, slot) = slots[self.rng.below(slots.len() as u64) as usize];
            match slot.plan.request(&mut self.rng, &shifts) {
                Ok(served) => {
                    slot.recorder
                        .record(&served.inputs, &served.outputs, served.latency_us);
                    ok += 1;
                    if let Some((predicted, truth)) = served.feedback {
                        let key = (model.clone(), slot.version);
                        let q = self
                            .quality
                            .entry(key)
                            .or_insert_with(|| ModelQuality::new(model.as_str(), slot.version));
                        // A row that is not finite (an extreme --shift or --error-per-iqr) is
                        // left unscored, as the agent refuses such feedback.
                        if q.score_values(&predicted, &truth, false).is_ok() {
                            scored += 1;
                        }
                    }
                }
                Err(()) => {
                    slot.recorder.record_error();
                    failed += 1;
                }
            }
        }
        for (_, s) in &slots {
            s.recorder.fold();
        }
        let stats = &self.shared.stats;
        stats.requests.fetch_add(ok, Ordering::Relaxed);
        stats.errors.fetch_add(failed, Ordering::Relaxed);
        stats.feedback.fetch_add(scored, Ordering::Relaxed);
    }

    /// Closes every window (retired ones too) into one signed record in the outbox, as the
    /// agent's `Telemetry::close_window` does.
    fn close_window(&mut self) {
        let now = now();
        let mut windows: BTreeMap<(String, u64), Window> = BTreeMap::new();
        let mut add = |model: String, version: u64, w: Window| {
            match windows.entry((model, version)) {
                Entry::Vacant(e) => {
                    e.insert(w);
                }
                // The same version swapped out and back in within one window.
                Entry::Occupied(mut e) => {
                    let have = e.get_mut();
                    if have.profile.merge(&w.profile).is_ok()
                        && have.latency.merge(&w.latency).is_ok()
                    {
                        have.requests += w.requests;
                        have.errors += w.errors;
                        have.started_at = have.started_at.min(w.started_at);
                    }
                }
            }
        };
        for (model, version, w) in self.retired.drain(..) {
            add(model, version, w);
        }
        for (name, s) in &self.active {
            if let Some(w) = s.recorder.close(now) {
                add(name.clone(), s.version, w);
            }
        }
        windows.retain(|_, w| w.requests > 0 || w.errors > 0);
        if windows.is_empty() {
            return;
        }
        let quality: Vec<ModelQuality> = std::mem::take(&mut self.quality)
            .into_values()
            .filter(|q| !q.is_empty())
            .collect();
        let start = windows.values().map(|w| w.started_at).min().unwrap_or(now);
        let models = windows
            .into_iter()
            .map(|((model, version), w)| model_window(model, version, w))
            .collect();
        let health = self.health();
        let appended = self.outbox.append(|seq, stats| {
            pack_record(
                &self.id,
                &self.key,
                seq,
                stats,
                Contents {
                    models,
                    quality,
                    bounds: (start.min(now), now),
                },
                health,
            )
        });
        if let Err(e) = appended {
            self.outbox.count_dropped(1);
            tracing::warn!(device = %self.id, error = %e, "telemetry window not recorded");
        }
    }

    /// Publishes outbox records as the agent's uplink does: those never sent on this
    /// connection and those unacked for `resend_after`, at most [`MAX_IN_FLIGHT`] outstanding.
    fn publish_pending(
        &self,
        client: &AsyncClient,
        sent: &mut HashMap<u64, Instant>,
        resend_after: Duration,
    ) {
        let pending = match self.outbox.pending(0, MAX_IN_FLIGHT * 4) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(device = %self.id, error = %e, "cannot read the outbox");
                return;
            }
        };
        sent.retain(|seq, _| self.outbox.contains(*seq));
        let outstanding = sent
            .values()
            .filter(|at| at.elapsed() < resend_after)
            .count();
        let mut budget = MAX_IN_FLIGHT.saturating_sub(outstanding);
        let topic = topic::telemetry(&self.id);
        for (seq, bytes) in pending {
            if budget == 0 {
                break;
            }
            if sent.get(&seq).is_some_and(|at| at.elapsed() < resend_after) {
                continue;
            }
            let first = !sent.contains_key(&seq);
            if client
                .try_publish(topic.clone(), QoS::AtLeastOnce, false, bytes)
                .is_err()
            {
                return;
            }
            if first {
                self.shared
                    .stats
                    .records_sent
                    .fetch_add(1, Ordering::Relaxed);
            }
            sent.insert(seq, Instant::now());
            budget -= 1;
        }
    }

    /// The hub's acks and pushed bundles; anything else, or anything that fails its checks,
    /// is ignored (the broker is not trusted).
    async fn on_publish(&mut self, topic_name: &str, payload: &[u8]) {
        if topic_name == topic::ack(&self.id) {
            let ack = Signed::<TelemetryAck>::from_bytes(payload)
                .and_then(|s| s.verify_hub(&self.trust, now(), Permission::Assignments));
            match ack {
                Ok(ack)
                    if ack.device_id == self.id && ack.seqs.len() <= telemetry::MAX_ACK_SEQS =>
                {
                    match self.outbox.ack(&ack.seqs) {
                        Ok(n) => {
                            self.shared
                                .stats
                                .records_acked
                                .fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            tracing::warn!(device = %self.id, error = %e, "outbox ack failed")
                        }
                    }
                }
                Ok(_) => {
                    tracing::warn!(device = %self.id, "ignored a telemetry ack for another device")
                }
                Err(e) => {
                    tracing::warn!(device = %self.id, error = %e, "ignored a telemetry ack that does not verify")
                }
            }
        } else if topic_name == topic::assignment(&self.id) {
            if payload.is_empty() {
                return;
            }
            match AssignmentBundle::from_wire(payload) {
                Ok(bundle) => self.take_bundle(bundle).await,
                Err(e) => {
                    tracing::warn!(device = %self.id, error = %e, "ignored a malformed pushed assignment")
                }
            }
        }
    }

    async fn poll_fallback(&mut self) {
        let polled = {
            let _permit = self.shared.permits.acquire().await;
            self.hub.poll(now(), 0).await
        };
        match polled {
            Ok(Poll::Changed(bundle)) => self.take_bundle(*bundle).await,
            Ok(Poll::Unchanged) => {}
            Err(e) => tracing::debug!(device = %self.id, error = %e, "assignment poll failed"),
        }
    }

    /// A bundle from either path: applied unless it is the one applied last.
    async fn take_bundle(&mut self, bundle: AssignmentBundle) {
        if self.last_bundle.as_ref() == Some(&bundle) {
            return;
        }
        self.backoff.reset();
        self.apply_and_report(&bundle).await;
        self.last_bundle = Some(bundle);
    }

    /// Applies, records the outcome as `last_error`, reports the status; a failure is retried
    /// with backoff and jitter, as the agent's update loop does.
    async fn apply_and_report(&mut self, bundle: &AssignmentBundle) {
        let result = self.apply(bundle, now()).await;
        let error = result.err().map(|e| e.to_string());
        let stats = &self.shared.stats;
        match (self.last_error.is_some(), error.is_some()) {
            (false, true) => {
                stats.failing.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                stats.failing.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        if let Some(e) = &error {
            tracing::debug!(device = %self.id, error = %e, "update failed; still serving the current model");
            let wait = self.backoff.next_wait(self.rng.next_u64());
            self.retry_at = Some(tokio::time::Instant::now() + wait);
        } else {
            self.retry_at = None;
            self.backoff.reset();
        }
        self.last_error = error;
        // The same status the agent reports (`Updater::status`).
        #[allow(clippy::needless_update)] // DeviceStatus may gain fields; they keep their defaults.
        let status = DeviceStatus {
            active: self.model_refs(|s| Some(s.version)),
            previous: self.model_refs(|s| s.previous),
            last_error: self.last_error.clone(),
            agent_version: AGENT_VERSION.into(),
            installs: self.progress.values().cloned().collect(),
            bundle_format: BUNDLE_FORMAT,
            window_secs: Some(
                self.window
                    .window_secs()
                    .unwrap_or(self.shared.config.window().as_secs()),
            ),
            // Simulated devices keep UTC.
            time_zone: None,
        };
        let reported = {
            let _permit = self.shared.permits.acquire().await;
            self.hub.report(now(), &status).await
        };
        if let Err(e) = reported {
            tracing::debug!(device = %self.id, error = %e, "status report failed");
        }
    }

    /// `Updater::apply`: the rotation chain, then each assignment; the first error is the
    /// bundle's.
    async fn apply(&mut self, bundle: &AssignmentBundle, now: u64) -> AgentResult<()> {
        if !bundle.rotations.is_empty() {
            self.trust = self.trust.rotate_all(&bundle.rotations)?;
        }
        self.apply_window(bundle, now);
        let mut first_error = None;
        for signed in &bundle.assignments {
            if let Err(e) = self.apply_one(signed, now).await {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// `Updater::apply_window`, by the agent's rule: a refused instruction is logged and the
    /// device keeps its window; it never fails the update.
    fn apply_window(&mut self, bundle: &AssignmentBundle, now: u64) {
        let Some(signed) = &bundle.window else {
            self.window.end();
            return;
        };
        match instruction::verify(signed, &self.trust, &self.id, now) {
            Ok(w) => {
                if let Acceptance::Refused { newest } = self.window.offer(w) {
                    tracing::debug!(device = %self.id, newest, "older window instruction ignored");
                }
            }
            Err(e) => {
                tracing::warn!(device = %self.id, error = %e, "telemetry window instruction refused")
            }
        }
    }

    /// `Updater::apply_one` with the agent's checks; the install is simulated.
    async fn apply_one(&mut self, signed: &Signed<Assignment>, now: u64) -> AgentResult<()> {
        let a = check::verify(signed, &self.trust, &self.id, &self.tags, now)?;
        let last = self.serials.get(&a.model).copied().unwrap_or(0);
        let current = self.active.get(&a.model).map(|s| s.version);
        match check::decide(&a, last, current)? {
            check::Decision::Ignore => return Ok(()),
            check::Decision::RecordSerialOnly => {
                self.record_serial(&a);
                return Ok(());
            }
            check::Decision::Install => {}
        }
        self.set_progress(&a, InstallPhase::Downloading, None);
        let result = self.install(&a, now).await;
        match &result {
            Ok(()) => self.set_progress(&a, InstallPhase::Active, None),
            Err(e) => self.set_progress(&a, e.install_phase(), Some(e.to_string())),
        }
        result
    }

    fn set_progress(&mut self, a: &Assignment, phase: InstallPhase, reason: Option<String>) {
        self.progress.insert(
            a.model.clone(),
            InstallStatus {
                model: a.model.clone(),
                version: a.version,
                phase,
                reason,
                at: now(),
            },
        );
    }

    /// The simulated install: the manifest fetched and verified, the artifact once per
    /// digest, the fault profile, then activation.
    async fn install(&mut self, a: &Assignment, now: u64) -> AgentResult<()> {
        let manifest = {
            let _permit = self.shared.permits.acquire().await;
            fetch::manifest(&self.hub, a, &self.trust, now).await?
        };
        let m = manifest.verified;
        if self.shared.config.download {
            self.shared.download(&self.hub, &m, now).await?;
        }
        self.install_fault(&m)?;
        self.activate(a, m, now);
        Ok(())
    }

    fn record_serial(&mut self, a: &Assignment) {
        let s = self.serials.entry(a.model.clone()).or_insert(0);
        *s = (*s).max(a.serial);
    }

    /// The fault profile: this device fails its smoke test on the chosen version, reported
    /// as the agent reports one.
    fn install_fault(&self, m: &ModelManifest) -> AgentResult<()> {
        let c = &self.shared.config;
        if c.fail_install_version != Some(m.version) || !self.shared.failing[self.index] {
            return Ok(());
        }
        let output = m
            .smoke_tests
            .first()
            .and_then(|t| t.expected.first())
            .map_or("y", |t| t.name.as_str());
        Err(AgentError::SmokeTest {
            name: m.name.clone(),
            version: m.version,
            message: format!(
                "smoke test 0 failed: output {output:?}[0] = 0.5, expected 3.2 ± 0.0001 (simulated install fault)"
            ),
        })
    }

    /// `Updater::activate`: the new version serves, the old one's window is retired, the
    /// serial recorded last.
    fn activate(&mut self, a: &Assignment, m: ModelManifest, now: u64) {
        let stats = &self.shared.stats;
        let old = self.active.remove(&m.name);
        if let Some(old) = &old {
            if let Some(w) = old.recorder.close(now)
                && (w.requests > 0 || w.errors > 0)
            {
                self.retired.push((m.name.clone(), old.version, w));
            }
            stats.count_active(&m.name, old.version, -1);
        }
        stats.count_active(&m.name, m.version, 1);
        let slot = Slot {
            version: m.version,
            previous: old.map(|o| o.version),
            recorder: WindowRecorder::with_buffer_rows(&m, now, BUFFER_ROWS),
            plan: self.shared.plan(&m),
        };
        self.active.insert(m.name.clone(), slot);
        self.record_serial(a);
        tracing::debug!(device = %self.id, model = %m.name, version = m.version, "now serving");
    }
}
