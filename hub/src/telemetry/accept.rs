//! Accepting what devices send: every message gets one [`Verdict`], counted in one place.
//!
//! A telemetry record is refused — counted by reason, logged, never a crash — when it is
//! oversize, arrives where no device is named, from a device that is not enrolled and
//! approved, not signed by that device's enrolled key (a spoof), malformed, older than the
//! retention, of a model version the hub does not have (or with other columns), or does not
//! merge with the fleet's aggregates. Refusals of a record the device itself signed are acked
//! too: sending it again cannot make it valid, and it must not clog the device's outbox.
//!
//! Records are accepted in batches: the batch's records are staged and committed in one
//! transaction ([`TelemetryWriter`]), the database is flushed once, and only then are the acks
//! handed back to the transport — so an acked record is durably stored.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use edgefleet_common::Error as WireError;
use edgefleet_common::drift::DriftConfig;
use edgefleet_common::sample::SampleBatch;
use edgefleet_common::telemetry::{
    DecodedWindow, Heartbeat, TelemetryRecord, open_device_message, unpack_record,
};

use super::store::{Liveness, TelemetryStore};
use super::writer::{References, Staged, TelemetryWriter};
use crate::config::SharedConfig;
use crate::devices::Devices;
use crate::error::HubResult;
use crate::registry::Registry;
use crate::store::DeviceRecord;

/// Why a message was refused: the label of `edgefleet_hub_telemetry_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    Oversize,
    UnknownDevice,
    BadSignature,
    Malformed,
    Stale,
    Unmergeable,
    UnknownTopic,
    UnknownModel,
}

impl Rejected {
    pub const ALL: [Rejected; 8] = [
        Rejected::Oversize,
        Rejected::UnknownDevice,
        Rejected::BadSignature,
        Rejected::Malformed,
        Rejected::Stale,
        Rejected::Unmergeable,
        Rejected::UnknownTopic,
        Rejected::UnknownModel,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Rejected::Oversize => "oversize",
            Rejected::UnknownDevice => "unknown_device",
            Rejected::BadSignature => "bad_signature",
            Rejected::Malformed => "malformed",
            Rejected::Stale => "stale",
            Rejected::Unmergeable => "unmergeable",
            Rejected::UnknownTopic => "unknown_topic",
            Rejected::UnknownModel => "unknown_model",
        }
    }
}

/// A message as the transport routed it.
#[derive(Debug)]
pub enum Message {
    /// A packed, signed telemetry record from `device`.
    Record { device: String, payload: Vec<u8> },
    /// A signed heartbeat (or last will) from `device`.
    Heartbeat { device: String, payload: Vec<u8> },
    /// A packed, signed sample batch from `device` (training samples it captured).
    Samples { device: String, payload: Vec<u8> },
    /// Something that names no device and no known message kind.
    Unrouted { topic: String, size: usize },
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Staged in this batch's group; acked once the group is committed and flushed.
    Stored {
        seq: u64,
        /// The model versions it reported (their fleet views changed).
        versions: Vec<(String, u64)>,
    },
    /// Stored before: acked again, nothing written.
    Duplicate { seq: u64 },
    /// Signed by the device but never storable: acked (so it leaves the outbox), not stored.
    AckOnly { seq: u64, reason: Rejected },
    /// Storing failed: not acked; the device sends it again.
    Retry,
    /// Refused, not acked: nobody the hub knows sent it, or it cannot be read.
    Refused(Rejected),
    /// A heartbeat or last will, recorded.
    Heartbeat,
    /// A heartbeat older than the one recorded: ignored.
    OutOfOrder,
}

impl Verdict {
    /// The sequence number to ack, if any.
    pub fn ack(&self) -> Option<u64> {
        match self {
            Verdict::Stored { seq, .. }
            | Verdict::Duplicate { seq }
            | Verdict::AckOnly { seq, .. } => Some(*seq),
            _ => None,
        }
    }
}

/// Ingest counters since the hub started, and the transport's link state, as `/metrics` and
/// the fleet view show them.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub heartbeats: AtomicU64,
    pub acks: AtomicU64,
    pub bytes: AtomicU64,
    rejected: [AtomicU64; 8],
    /// Where devices should connect (`mqtt://…`), once the transport has started.
    pub broker: std::sync::OnceLock<String>,
    pub connected: AtomicBool,
}

impl IngestStats {
    pub fn rejected(&self, r: Rejected) -> u64 {
        self.rejected[r as usize].load(Ordering::Relaxed)
    }

    /// The one place a verdict is counted.
    pub fn count(&self, verdict: &Verdict) {
        let counter = match verdict {
            Verdict::Stored { .. } => &self.stored,
            Verdict::Duplicate { .. } => &self.duplicates,
            Verdict::AckOnly { reason, .. } | Verdict::Refused(reason) => {
                &self.rejected[*reason as usize]
            }
            Verdict::Heartbeat => &self.heartbeats,
            Verdict::Retry | Verdict::OutOfOrder => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a batch produced: acks to publish, model versions whose fleet view changed.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub acks: BTreeMap<String, Vec<u64>>,
    pub touched: Vec<(String, u64)>,
}

/// The consumer's state: the writer and what it caches between messages. One per hub (it
/// owns the one [`TelemetryWriter`]).
pub struct Accept {
    store: TelemetryStore,
    registry: Registry,
    devices: Devices,
    config: SharedConfig,
    stats: Arc<IngestStats>,
    writer: TelemetryWriter,
    /// Drift rules per model, read once per batch (an admin may change them at any time).
    drift_configs: HashMap<String, DriftConfig>,
    /// Each device's rollout cohorts, read once per batch (a rollout step may change them).
    cohorts: HashMap<String, Vec<String>>,
}

impl Accept {
    pub(super) fn new(
        store: TelemetryStore,
        registry: Registry,
        devices: Devices,
        config: SharedConfig,
        stats: Arc<IngestStats>,
    ) -> Self {
        Self {
            writer: TelemetryWriter::new(store.clone()),
            store,
            registry,
            devices,
            config,
            stats,
            drift_configs: HashMap::new(),
            cohorts: HashMap::new(),
        }
    }

    pub fn stats(&self) -> &IngestStats {
        &self.stats
    }

    /// Judges a batch, commits and flushes what it stored, counts every verdict; the returned
    /// acks may be published.
    pub async fn batch(&mut self, messages: Vec<Message>) -> BatchOutcome {
        self.drift_configs.clear();
        self.cohorts.clear();
        let now = crate::now();
        let mut verdicts = Vec::with_capacity(messages.len());
        for m in messages {
            verdicts.push(self.judge(m, now));
        }
        let any_ack = verdicts.iter().any(|(_, v)| v.ack().is_some());
        if let Err(error) = self.commit(any_ack).await {
            // Nothing is acked: the devices send the records again.
            tracing::error!(%error, "cannot store telemetry; not acking this batch");
            for (_, v) in &mut verdicts {
                if v.ack().is_some() {
                    *v = Verdict::Retry;
                }
            }
        }
        let mut out = BatchOutcome::default();
        for (device, verdict) in verdicts {
            self.stats.count(&verdict);
            let Some(device) = device else { continue };
            if let Verdict::Stored { versions, .. } = &verdict {
                for t in versions {
                    if !out.touched.contains(t) {
                        out.touched.push(t.clone());
                    }
                }
            }
            // Heard from: after the commit, so last_seen never runs ahead of what is stored.
            if matches!(verdict, Verdict::Stored { .. } | Verdict::Heartbeat) {
                self.devices.touch(&device, now);
            }
            if let Some(seq) = verdict.ack() {
                out.acks.entry(device.id).or_default().push(seq);
            }
        }
        out
    }

    /// Commits the staged group, then flushes when something is to be acked.
    async fn commit(&mut self, flush: bool) -> HubResult<()> {
        self.writer.commit()?;
        if flush {
            self.store.flush().await?;
        }
        Ok(())
    }

    /// One message's verdict, with the device it came from when the hub knows it.
    fn judge(&mut self, m: Message, now: u64) -> (Option<DeviceRecord>, Verdict) {
        let outcome = match m {
            Message::Unrouted { topic, size } => {
                self.stats.bytes.fetch_add(size as u64, Ordering::Relaxed);
                tracing::warn!(%topic, "telemetry on an unexpected topic ignored");
                Err(Rejected::UnknownTopic)
            }
            Message::Record { device, payload } => {
                self.stats
                    .bytes
                    .fetch_add(payload.len() as u64, Ordering::Relaxed);
                self.open_record(&device, &payload).map(|(device, record)| {
                    let verdict = self.judge_record(&device, &record, now);
                    (device, verdict)
                })
            }
            Message::Heartbeat { device, payload } => {
                self.stats
                    .bytes
                    .fetch_add(payload.len() as u64, Ordering::Relaxed);
                self.heartbeat(&device, &payload, now)
            }
            Message::Samples { device, payload } => {
                self.stats
                    .bytes
                    .fetch_add(payload.len() as u64, Ordering::Relaxed);
                self.open_packed::<SampleBatch>(&device, &payload, |b| &b.device_id)
                    .map(|(device, batch)| {
                        let verdict = self.judge_samples(&device, &batch, now);
                        (device, verdict)
                    })
            }
        };
        match outcome {
            Ok((device, verdict)) => (Some(device), verdict),
            Err(reason) => (None, Verdict::Refused(reason)),
        }
    }

    /// The approved device a message of `size` bytes claims to come from.
    fn device(&self, id: &str, size: usize) -> Result<DeviceRecord, Rejected> {
        let limit = self.config.load().config.max_telemetry_bytes as usize;
        if size > limit {
            tracing::warn!(device = %id, size, limit, "oversize telemetry message dropped");
            return Err(Rejected::Oversize);
        }
        match self.devices.get(id) {
            Ok(Some(d)) if d.approved => Ok(d),
            Ok(_) => {
                tracing::warn!(device = %id, "telemetry from a device that is not enrolled and approved");
                Err(Rejected::UnknownDevice)
            }
            Err(error) => {
                tracing::error!(%error, "cannot read the device registry");
                Err(Rejected::UnknownDevice)
            }
        }
    }

    /// Checks the signature against the device's enrolled key and decodes.
    fn opened<T: edgefleet_common::encoding::Document>(
        device: &DeviceRecord,
        payload: &[u8],
    ) -> Result<T, Rejected> {
        open_device_message::<T>(payload, usize::MAX, &device.public_key).map_err(|error| {
            let reason = match error {
                WireError::BadSignature { .. } | WireError::UntrustedSigner { .. } => {
                    Rejected::BadSignature
                }
                _ => Rejected::Malformed,
            };
            tracing::warn!(device = %device.id, %error, reason = reason.label(), "telemetry message rejected");
            reason
        })
    }

    /// A record's device and body, once it is known to be theirs: the refusals here are not
    /// acked (the hub cannot tell who to ack, or the signer is not the device).
    fn open_record(
        &self,
        id: &str,
        payload: &[u8],
    ) -> Result<(DeviceRecord, TelemetryRecord), Rejected> {
        self.open_packed::<TelemetryRecord>(id, payload, |r| &r.device_id)
    }

    /// A packed (maybe deflated) signed message of `id`, checked against its enrolled key;
    /// the body must name the device the topic names.
    fn open_packed<T: edgefleet_common::encoding::Document>(
        &self,
        id: &str,
        payload: &[u8],
        device_of: fn(&T) -> &str,
    ) -> Result<(DeviceRecord, T), Rejected> {
        let device = self.device(id, payload.len())?;
        let limit = self.config.load().config.max_telemetry_bytes as usize;
        let signed = unpack_record(payload, limit).map_err(|error| {
            let reason = match error {
                WireError::TooLarge { .. } => Rejected::Oversize,
                _ => Rejected::Malformed,
            };
            tracing::warn!(device = %id, %error, reason = reason.label(), "telemetry message rejected");
            reason
        })?;
        let body: T = Self::opened(&device, &signed)?;
        if device_of(&body) != id {
            tracing::warn!(device = %id, claims = %device_of(&body), "telemetry published under another device's topic");
            return Err(Rejected::BadSignature);
        }
        Ok((device, body))
    }

    /// The verdict on a sample batch its device signed: stored, a duplicate, or acked and
    /// refused (malformed, past the samples' retention, of a version the hub does not have).
    fn judge_samples(&mut self, device: &DeviceRecord, batch: &SampleBatch, now: u64) -> Verdict {
        let (id, seq) = (&device.id, batch.seq);
        let refuse = |reason: Rejected| Verdict::AckOnly { seq, reason };
        if let Err(error) = batch.validate() {
            tracing::warn!(device = %id, seq, %error, "malformed sample batch (acked, not stored)");
            return refuse(Rejected::Malformed);
        }
        let retention = self.config.load().config.samples_retention_days * 86_400;
        if batch.window_end.saturating_add(retention) < now {
            return refuse(Rejected::Stale);
        }
        match self.registry.facts(&batch.model, batch.version) {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::warn!(device = %id, seq, model = %batch.model, version = batch.version, "samples of a version the hub does not have (acked, not stored)");
                return refuse(Rejected::UnknownModel);
            }
            Err(error) => {
                tracing::error!(%error, "cannot read the registry; the device will send it again");
                return Verdict::Retry;
            }
        }
        match self.writer.stage_samples(batch) {
            Ok(Staged::Stored) => Verdict::Stored {
                seq,
                versions: vec![],
            },
            Ok(Staged::Duplicate) => Verdict::Duplicate { seq },
            Ok(Staged::Unmergeable(reason)) => {
                tracing::warn!(device = %id, seq, %reason, "sample batch refused (acked, not stored)");
                refuse(Rejected::Unmergeable)
            }
            Err(error) => {
                tracing::error!(device = %id, seq, %error, "cannot store samples; the device will send them again");
                Verdict::Retry
            }
        }
    }

    /// The verdict on a record its device signed: stored, a duplicate, or acked and refused.
    fn judge_record(
        &mut self,
        device: &DeviceRecord,
        record: &TelemetryRecord,
        now: u64,
    ) -> Verdict {
        let (id, seq) = (&device.id, record.seq);
        let refuse = |reason: Rejected| Verdict::AckOnly { seq, reason };
        let windows = match record.validate() {
            Ok(w) => w,
            Err(error) => {
                tracing::warn!(device = %id, seq, %error, "malformed telemetry record (acked, not stored)");
                return refuse(Rejected::Malformed);
            }
        };
        let retention = self.config.load().config.telemetry_retention_days * 86_400;
        if record.window_end.saturating_add(retention) < now {
            tracing::warn!(device = %id, seq, window_end = record.window_end, "telemetry older than the retention (acked, not stored)");
            return refuse(Rejected::Stale);
        }
        let references = match self.references(&windows) {
            Ok(r) => r,
            Err((w, reason)) => {
                tracing::warn!(device = %id, seq, model = %w.model, version = w.version, %reason, "telemetry window refused (acked, not stored)");
                return refuse(Rejected::UnknownModel);
            }
        };
        if let Err((model, version, reason)) = self.check_quality(record) {
            tracing::warn!(device = %id, seq, %model, version, %reason, "telemetry quality refused (acked, not stored)");
            return refuse(Rejected::UnknownModel);
        }
        // Its tags, and the rollout cohorts it is in (one per model rolled out), if any.
        let mut scopes = device.tags.clone();
        let cohorts = match self.cohorts.get(id.as_str()) {
            Some(c) => Ok(c.clone()),
            None => self.store.cohorts(id).inspect(|c| {
                self.cohorts.insert(id.clone(), c.clone());
            }),
        };
        match cohorts {
            Ok(cohorts) => scopes.extend(cohorts),
            Err(error) => {
                tracing::error!(%error, "cannot read the cohort; the device will send it again");
                return Verdict::Retry;
            }
        }
        match self
            .writer
            .stage(record, &windows, &scopes, &references, now)
        {
            Ok(Staged::Stored) => Verdict::Stored {
                seq,
                versions: windows
                    .iter()
                    .map(|w| (w.model.clone(), w.version))
                    .collect(),
            },
            Ok(Staged::Duplicate) => {
                tracing::debug!(device = %id, seq, "duplicate telemetry record (acked again)");
                Verdict::Duplicate { seq }
            }
            Ok(Staged::Unmergeable(reason)) => {
                tracing::warn!(device = %id, seq, %reason, "telemetry record does not merge (acked, not stored)");
                refuse(Rejected::Unmergeable)
            }
            Err(error) => {
                tracing::error!(device = %id, seq, %error, "cannot store telemetry; the device will send it again");
                Verdict::Retry
            }
        }
    }

    /// Each window's version facts and drift rules. A window must be of a model version the
    /// hub has, with exactly the columns that version's manifest names (the rule agents
    /// profile by): otherwise it could set the schema of an hour's aggregate and make every
    /// honest window unmergeable.
    fn references<'w>(
        &mut self,
        windows: &'w [DecodedWindow],
    ) -> Result<References, (&'w DecodedWindow, String)> {
        let mut references = References::new();
        for w in windows {
            let facts = match self.registry.facts(&w.model, w.version) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    return Err((
                        w,
                        format!("the hub has no model {} v{}", w.model, w.version),
                    ));
                }
                Err(error) => return Err((w, format!("cannot read the registry: {error}"))),
            };
            let got: Vec<&str> = w.profile.columns.iter().map(|c| c.name.as_str()).collect();
            // An agent that could not profile (unusable names) sends no columns at all.
            if !got.is_empty()
                && !got
                    .iter()
                    .copied()
                    .eq(facts.columns.iter().map(String::as_str))
            {
                return Err((
                    w,
                    format!("columns {got:?} are not the manifest's {:?}", facts.columns),
                ));
            }
            if facts.reference.is_some() {
                let config = self.drift_config(&w.model);
                references.insert((w.model.clone(), w.version), (facts, config));
            }
        }
        Ok(references)
    }

    /// Each quality must be of a model version the hub has, scored as its manifest says
    /// (a regression's errors, a classifier's labels): a device could otherwise set the kind
    /// of an hour's quality and make every honest device's unmergeable.
    fn check_quality(&self, record: &TelemetryRecord) -> Result<(), (String, u64, String)> {
        for q in &record.quality {
            let refuse = |reason: String| (q.model.clone(), q.version, reason);
            let facts = match self.registry.facts(&q.model, q.version) {
                Ok(Some(f)) => f,
                Ok(None) => return Err(refuse("the hub has no such model version".into())),
                Err(error) => return Err(refuse(format!("cannot read the registry: {error}"))),
            };
            if let Some(task) = q.task()
                && facts.task != Some(task)
            {
                return Err(refuse(format!(
                    "scored as {task:?}, but the manifest's first output makes it {:?}",
                    facts.task
                )));
            }
        }
        Ok(())
    }

    fn drift_config(&mut self, model: &str) -> DriftConfig {
        if let Some(c) = self.drift_configs.get(model) {
            return c.clone();
        }
        let c = self.store.drift_config(model).unwrap_or_else(|error| {
            tracing::warn!(%error, model, "unreadable drift rules; using the defaults");
            DriftConfig::default()
        });
        self.drift_configs.insert(model.to_owned(), c.clone());
        c
    }

    /// Records a heartbeat unless an older one: heartbeats may arrive out of order.
    fn heartbeat(
        &self,
        id: &str,
        payload: &[u8],
        now: u64,
    ) -> Result<(DeviceRecord, Verdict), Rejected> {
        let device = self.device(id, payload.len())?;
        let hb: Heartbeat = Self::opened(&device, payload)?;
        if hb.device_id != id {
            return Err(Rejected::BadSignature);
        }
        hb.validate().map_err(|error| {
            tracing::warn!(device = %id, %error, "malformed heartbeat");
            Rejected::Malformed
        })?;
        // A last will is signed when the agent starts, so it is older than the run's
        // heartbeats; it counts unless a later run has been heard from (a late will of an
        // earlier run).
        if let Ok(Some(prev)) = self.store.liveness(id) {
            let stale = if hb.online {
                prev.at > hb.at
            } else {
                prev.started_at > hb.started_at
            };
            if stale {
                return Ok((device, Verdict::OutOfOrder));
            }
        }
        let liveness = Liveness {
            online: hb.online,
            at: hb.at,
            started_at: hb.started_at,
            received_at: now,
            health: hb.health,
            active: hb.active,
            outbox: hb.outbox,
            agent_version: hb.agent_version,
        };
        if let Err(error) = self.store.put_liveness(id, &liveness) {
            tracing::error!(%error, "cannot store a heartbeat");
        }
        if !liveness.online {
            tracing::info!(device = %id, "device went offline (MQTT last will)");
        }
        Ok((device, Verdict::Heartbeat))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::agg_key;
    use crate::telemetry::{ALL, HOUR};
    use crate::testkit::Kit;
    use edgefleet_common::quality::ModelQuality;
    use edgefleet_common::sketch::{LatencySketch, Profile};
    use edgefleet_common::telemetry::{ModelWindow, pack_record};
    use edgefleet_common::{SecretKey, Signed};

    /// A signed, packed record of one window of `model` `version` over `columns`.
    fn record(
        key: &SecretKey,
        device: &str,
        seq: u64,
        window_end: u64,
        window: (&str, u64, &[&str]),
    ) -> Vec<u8> {
        record_with(key, device, seq, window_end, window, vec![])
    }

    /// [`record`] with prediction quality.
    fn record_with(
        key: &SecretKey,
        device: &str,
        seq: u64,
        window_end: u64,
        window: (&str, u64, &[&str]),
        quality: Vec<ModelQuality>,
    ) -> Vec<u8> {
        let (model, version, columns) = window;
        let specs: Vec<_> = columns
            .iter()
            .map(|n| edgefleet_common::sketch::ColumnSpec {
                name: (*n).into(),
                kind: edgefleet_common::sketch::ColumnKind::Numeric,
            })
            .collect();
        let mut profile =
            Profile::new(&specs, edgefleet_common::sketch::DEFAULT_K).expect("profile");
        let mut latency = LatencySketch::default();
        for i in 0..4 {
            profile
                .update_row(&vec![i as f64; columns.len()])
                .expect("row");
            latency.record_us(100.0);
        }
        let r = TelemetryRecord {
            device_id: device.into(),
            seq,
            window_start: window_end - 60,
            window_end,
            models: vec![ModelWindow {
                model: model.into(),
                version,
                profile: profile.to_bytes(),
                latency: latency.into(),
                requests: 4,
                errors: 0,
            }],
            health: Default::default(),
            outbox: Default::default(),
            agent_version: "test".into(),
            quality,
        };
        pack_record(
            &Signed::sign(&r, key, None)
                .expect("sign")
                .to_bytes()
                .expect("bytes"),
        )
    }

    const COLUMNS: &[&str] = &["price", "temp", "y"];

    fn rec(device: &str, payload: Vec<u8>) -> Message {
        Message::Record {
            device: device.into(),
            payload,
        }
    }

    async fn kit() -> (Kit, SecretKey) {
        let kit = Kit::new();
        kit.publish("demand", 1).await;
        let key = kit.enroll("shop-1", &["eu"], true).await;
        (kit, key)
    }

    #[tokio::test]
    async fn a_stored_record_is_acked_after_its_commit_and_its_resend_is_a_duplicate() {
        let (kit, key) = kit().await;
        let mut accept = kit.hub.telemetry.accept();
        let now = crate::now();
        let payload = record(&key, "shop-1", 1, now, ("demand", 1, COLUMNS));
        let out = accept
            .batch(vec![
                rec("shop-1", payload.clone()),
                rec("shop-1", payload.clone()),
            ])
            .await;
        assert_eq!(
            out.acks["shop-1"],
            vec![1, 1],
            "both acked, the copy as a duplicate"
        );
        assert_eq!(out.touched, vec![("demand".to_owned(), 1)]);
        let stats = accept.stats();
        assert_eq!(stats.stored.load(Ordering::Relaxed), 1);
        assert_eq!(stats.duplicates.load(Ordering::Relaxed), 1);
        // Stored and durable: the latest window is there and a later resend is a duplicate.
        let latest = kit.hub.telemetry.store().latest("shop-1").expect("read");
        assert_eq!(latest.map(|l| l.seq), Some(1));
        assert_eq!(
            accept.judge(rec("shop-1", payload), now).1,
            Verdict::Duplicate { seq: 1 }
        );
    }

    #[tokio::test]
    async fn records_nobody_known_signed_are_refused_and_not_acked() {
        let (kit, key) = kit().await;
        let stranger = SecretKey::generate().expect("key");
        let pending = kit.enroll("shop-2", &[], false).await;
        let mut accept = kit.hub.telemetry.accept();
        let now = crate::now();
        let w = ("demand", 1, COLUMNS);
        let limit = kit.hub.config().config.max_telemetry_bytes as usize;
        let cases = [
            (
                "unknown device",
                rec("shop-9", record(&stranger, "shop-9", 1, now, w)),
                Rejected::UnknownDevice,
            ),
            (
                "not approved",
                rec("shop-2", record(&pending, "shop-2", 1, now, w)),
                Rejected::UnknownDevice,
            ),
            (
                "spoofed key",
                rec("shop-1", record(&stranger, "shop-1", 1, now, w)),
                Rejected::BadSignature,
            ),
            (
                "another device's topic",
                rec("shop-1", record(&key, "shop-2", 1, now, w)),
                Rejected::BadSignature,
            ),
            (
                "garbage",
                rec("shop-1", b"\x01not a record".to_vec()),
                Rejected::Malformed,
            ),
            (
                "oversize",
                rec("shop-1", vec![0; limit + 1]),
                Rejected::Oversize,
            ),
            (
                "unrouted",
                Message::Unrouted {
                    topic: "x/y".into(),
                    size: 3,
                },
                Rejected::UnknownTopic,
            ),
        ];
        for (what, message, reason) in cases {
            let (device, verdict) = accept.judge(message, now);
            assert_eq!(verdict, Verdict::Refused(reason), "{what}");
            assert!(device.is_none(), "{what}: nobody to ack");
        }
        let out = accept
            .batch(vec![rec("shop-9", record(&stranger, "shop-9", 2, now, w))])
            .await;
        assert!(out.acks.is_empty());
        assert_eq!(accept.stats().rejected(Rejected::UnknownDevice), 1);
        assert!(
            kit.hub
                .telemetry
                .store()
                .latest("shop-1")
                .expect("read")
                .is_none()
        );
    }

    #[tokio::test]
    async fn records_the_device_signed_but_the_hub_cannot_store_are_acked_and_counted() {
        let (kit, key) = kit().await;
        let mut accept = kit.hub.telemetry.accept();
        let now = crate::now();
        let cases = [
            (
                "unknown version",
                record(&key, "shop-1", 1, now, ("demand", 7, COLUMNS)),
                Rejected::UnknownModel,
            ),
            (
                "other columns",
                record(&key, "shop-1", 2, now, ("demand", 1, &["a", "b", "c"])),
                Rejected::UnknownModel,
            ),
            (
                "older than the retention",
                record(
                    &key,
                    "shop-1",
                    3,
                    now - 400 * 86_400,
                    ("demand", 1, COLUMNS),
                ),
                Rejected::Stale,
            ),
            (
                "sequence 0",
                record(&key, "shop-1", 0, now, ("demand", 1, COLUMNS)),
                Rejected::Malformed,
            ),
        ];
        for (what, payload, reason) in cases {
            let (device, verdict) = accept.judge(rec("shop-1", payload), now);
            let seq = verdict.ack().expect(what);
            assert_eq!(verdict, Verdict::AckOnly { seq, reason }, "{what}");
            assert_eq!(device.map(|d| d.id).as_deref(), Some("shop-1"), "{what}");
        }
        let out = accept
            .batch(vec![rec(
                "shop-1",
                record(&key, "shop-1", 4, now, ("demand", 9, COLUMNS)),
            )])
            .await;
        assert_eq!(out.acks["shop-1"], vec![4]);
        assert!(out.touched.is_empty());
        assert_eq!(accept.stats().rejected(Rejected::UnknownModel), 1);
        assert_eq!(accept.stats().stored.load(Ordering::Relaxed), 0);
        assert!(
            kit.hub
                .telemetry
                .store()
                .latest("shop-1")
                .expect("read")
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_record_the_hub_fails_to_store_is_retried_not_acked() {
        let (kit, key) = kit().await;
        let mut accept = kit.hub.telemetry.accept();
        let now = crate::now();
        // The fleet's aggregate of this hour cannot be read back: staging the record fails.
        let agg = agg_key("demand", 1, now / HOUR * HOUR, ALL);
        let store = kit.hub.telemetry.store();
        store
            .agg
            .insert(agg.as_slice(), b"\xffnot an aggregate".as_slice())
            .expect("insert");
        let payload = record(&key, "shop-1", 1, now, ("demand", 1, COLUMNS));
        let (device, verdict) = accept.judge(rec("shop-1", payload.clone()), now);
        assert_eq!(verdict, Verdict::Retry);
        assert_eq!(device.map(|d| d.id).as_deref(), Some("shop-1"));
        let out = accept.batch(vec![rec("shop-1", payload.clone())]).await;
        assert!(out.acks.is_empty(), "not acked: {:?}", out.acks);
        assert!(out.touched.is_empty());
        let stats = accept.stats();
        assert_eq!(stats.stored.load(Ordering::Relaxed), 0);
        for reason in Rejected::ALL {
            assert_eq!(
                stats.rejected(reason),
                0,
                "{reason:?}: a retry is no refusal"
            );
        }
        assert!(store.latest("shop-1").expect("read").is_none());
        // Once the store reads again, the device's resend is stored and acked.
        store.agg.remove(agg.as_slice()).expect("remove");
        let out = accept.batch(vec![rec("shop-1", payload)]).await;
        assert_eq!(out.acks["shop-1"], vec![1]);
        assert_eq!(accept.stats().stored.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_window_that_does_not_merge_is_acked_and_counted_not_stored() {
        let (kit, key) = kit().await;
        let mut accept = kit.hub.telemetry.accept();
        let now = crate::now();
        let first = record(&key, "shop-1", 1, now, ("demand", 1, COLUMNS));
        let out = accept.batch(vec![rec("shop-1", first)]).await;
        assert_eq!(out.acks["shop-1"], vec![1]);
        // An agent that could not profile sends no columns: a window of the right version,
        // but it does not merge with this hour's aggregate of three columns.
        let payload = record(&key, "shop-1", 2, now, ("demand", 1, &[]));
        assert_eq!(
            accept.judge(rec("shop-1", payload.clone()), now).1,
            Verdict::AckOnly {
                seq: 2,
                reason: Rejected::Unmergeable
            }
        );
        let out = accept.batch(vec![rec("shop-1", payload)]).await;
        assert_eq!(
            out.acks["shop-1"],
            vec![2],
            "acked, so it leaves the outbox"
        );
        assert!(out.touched.is_empty());
        let stats = accept.stats();
        assert_eq!(stats.rejected(Rejected::Unmergeable), 1);
        assert_eq!(stats.stored.load(Ordering::Relaxed), 1);
        let latest = kit.hub.telemetry.store().latest("shop-1").expect("read");
        assert_eq!(
            latest.map(|l| l.seq),
            Some(1),
            "the latest window is still seq 1"
        );
    }

    /// A regression's quality from (predicted, truth) pairs.
    fn regression(version: u64, pairs: &[(f64, f64)]) -> ModelQuality {
        let mut q = ModelQuality::new("demand", version);
        for (p, t) in pairs {
            q.score_values(&[*p], &[*t], false).expect("score");
        }
        q
    }

    #[tokio::test]
    async fn quality_merges_per_version_tag_and_hour_and_must_fit_the_manifest() {
        let (kit, key) = kit().await;
        let key2 = kit.enroll("shop-2", &[], true).await;
        let mut accept = kit.hub.telemetry.accept();
        let now = crate::now();
        let w = ("demand", 1, COLUMNS);
        let (a, b) = ([(10.0, 12.0), (5.0, 4.0)], [(3.0, 3.0), (8.0, 2.0)]);
        let out = accept
            .batch(vec![
                rec(
                    "shop-1",
                    record_with(&key, "shop-1", 1, now, w, vec![regression(1, &a)]),
                ),
                rec(
                    "shop-2",
                    record_with(&key2, "shop-2", 1, now, w, vec![regression(1, &b)]),
                ),
            ])
            .await;
        assert_eq!(out.acks.len(), 2);
        assert_eq!(accept.stats().stored.load(Ordering::Relaxed), 2);
        let store = kit.hub.telemetry.store();
        let hand = |pairs: &[(f64, f64)]| {
            pairs.iter().map(|(p, t)| (p - t).abs()).sum::<f64>() / pairs.len() as f64
        };
        let fleet = store
            .quality("demand", 1, ALL, 0, u64::MAX)
            .expect("read")
            .expect("quality");
        let all: Vec<(f64, f64)> = a.iter().chain(&b).copied().collect();
        assert!((fleet.mae().expect("mae") - hand(&all)).abs() < 1e-12);
        assert_eq!(fleet.matched, 4);
        // The tag scope holds shop-1's alone.
        let eu = store
            .quality("demand", 1, "eu", 0, u64::MAX)
            .expect("read")
            .expect("quality");
        assert!((eu.mae().expect("mae") - hand(&a)).abs() < 1e-12);
        // The API's reports carry it.
        let report = kit
            .hub
            .telemetry
            .drift("demand", 1, &Default::default())
            .expect("drift");
        let q = report.quality.expect("quality in the drift report");
        assert_eq!(q.matched, 4);
        assert!((q.mae.expect("mae") - hand(&all)).abs() < 1e-12);
        let v = kit
            .hub
            .telemetry
            .version_report("demand", 1, now)
            .expect("report");
        assert_eq!(v.quality.map(|q| q.matched), Some(4));
        // Quality of a version the hub does not have, or scored as the wrong kind, is refused
        // and nothing of the record is stored.
        let mut label = ModelQuality::new("demand", 1);
        label.score_label("a", "b", None, false).expect("score");
        for (seq, bad) in [(2, vec![regression(9, &a)]), (3, vec![label])] {
            let payload = record_with(&key, "shop-1", seq, now, w, bad);
            assert_eq!(
                accept.judge(rec("shop-1", payload), now).1,
                Verdict::AckOnly {
                    seq,
                    reason: Rejected::UnknownModel
                }
            );
        }
        let fleet = store
            .quality("demand", 1, ALL, 0, u64::MAX)
            .expect("read")
            .expect("quality");
        assert_eq!(fleet.matched, 4, "nothing of the refused records merged");
    }

    #[tokio::test]
    async fn a_record_of_the_first_layout_is_still_accepted() {
        /// The record as agents before ground truth sign it.
        #[derive(serde::Serialize, serde::Deserialize)]
        struct RecordV1 {
            device_id: String,
            seq: u64,
            window_start: u64,
            window_end: u64,
            models: Vec<ModelWindow>,
            health: edgefleet_common::telemetry::Health,
            outbox: edgefleet_common::telemetry::OutboxStats,
            agent_version: String,
        }
        impl edgefleet_common::encoding::Document for RecordV1 {
            const KIND: &'static str = "telemetry";
            const WHAT: &'static str = "telemetry record";
        }
        let (kit, key) = kit().await;
        let mut accept = kit.hub.telemetry.accept();
        let now = crate::now();
        // A layout-2 record's window, re-signed in layout 1.
        let packed = record(&key, "shop-1", 1, now, ("demand", 1, COLUMNS));
        let signed = edgefleet_common::telemetry::unpack_record(&packed, 1 << 20).expect("unpack");
        let r: TelemetryRecord = Signed::<TelemetryRecord>::from_bytes(&signed)
            .and_then(|s| s.decode_unverified())
            .expect("decode");
        let v1 = RecordV1 {
            device_id: r.device_id,
            seq: r.seq,
            window_start: r.window_start,
            window_end: r.window_end,
            models: r.models,
            health: r.health,
            outbox: r.outbox,
            agent_version: "0.1.0".into(),
        };
        let payload = pack_record(
            &Signed::sign(&v1, &key, None)
                .and_then(|s| s.to_bytes())
                .expect("sign"),
        );
        let out = accept.batch(vec![rec("shop-1", payload)]).await;
        assert_eq!(out.acks["shop-1"], vec![1]);
        assert_eq!(accept.stats().stored.load(Ordering::Relaxed), 1);
        let latest = kit.hub.telemetry.store().latest("shop-1").expect("read");
        assert_eq!(latest.map(|l| l.agent_version), Some("0.1.0".into()));
    }

    #[tokio::test]
    async fn an_older_heartbeat_changes_nothing() {
        let (kit, key) = kit().await;
        let mut accept = kit.hub.telemetry.accept();
        let now = crate::now();
        let beat = |at: u64, online: bool| {
            let hb = Heartbeat {
                device_id: "shop-1".into(),
                at,
                started_at: now - 100,
                online,
                health: None,
                active: vec![],
                outbox: Default::default(),
                agent_version: "test".into(),
            };
            Message::Heartbeat {
                device: "shop-1".into(),
                payload: Signed::sign(&hb, &key, None)
                    .expect("sign")
                    .to_bytes()
                    .expect("bytes"),
            }
        };
        assert_eq!(accept.judge(beat(now, true), now).1, Verdict::Heartbeat);
        assert_eq!(
            accept.judge(beat(now - 10, true), now).1,
            Verdict::OutOfOrder
        );
        // The last will of this run counts even though it was signed earlier.
        assert_eq!(
            accept.judge(beat(now - 100, false), now).1,
            Verdict::Heartbeat
        );
        let live = kit.hub.telemetry.store().liveness("shop-1").expect("read");
        assert_eq!(live.map(|l| (l.online, l.at)), Some((false, now - 100)));
    }
}
