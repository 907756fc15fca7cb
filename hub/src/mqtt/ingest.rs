//! The telemetry consumer: every device message from the broker is checked, stored and acked.
//!
//! A telemetry message is refused — counted by reason, logged, never a crash — when it is
//! oversize, on a topic that names no device, from a device that is not enrolled and
//! approved, not signed by that device's enrolled key (a spoof), malformed, older than the
//! retention, or does not merge with the fleet's aggregates. Refusals of a message that the
//! device itself signed are acked too: sending it again cannot make it valid, and it must not
//! clog the device's outbox. Messages are handled in batches: the batch's records are staged
//! and committed in one transaction ([`TelemetryWriter`]), the database is flushed once, and
//! only then are the acks published — so an acked record is durably stored.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use edgefleet_common::drift::DriftConfig;
use edgefleet_common::sketch::Profile;
use edgefleet_common::telemetry::{
    Heartbeat, TelemetryAck, TelemetryRecord, open_device_message, topic, unpack_record,
};
use edgefleet_common::{Error as WireError, Signed};

use crate::api::SharedState;
use crate::store::DeviceRecord;
use crate::telemetry::{Liveness, Staged, TelemetryStore, TelemetryWriter};

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

/// Ingest counters since the hub started (exported at `/metrics`).
#[derive(Debug, Default)]
pub struct IngestCounters {
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub heartbeats: AtomicU64,
    pub acks: AtomicU64,
    pub bytes: AtomicU64,
    rejected: [AtomicU64; 8],
}

impl IngestCounters {
    pub fn rejected(&self, r: Rejected) -> u64 {
        self.rejected[r as usize].load(Ordering::Relaxed)
    }

    fn reject(&self, r: Rejected) {
        self.rejected[r as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// A message as it came from the broker.
#[derive(Debug)]
pub struct Incoming {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// The consumer's state: caches of what does not change (a version's reference profile).
pub struct Ingest {
    pub state: SharedState,
    pub telemetry: TelemetryStore,
    pub counters: Arc<IngestCounters>,
    writer: TelemetryWriter,
    references: HashMap<(String, u64), Option<Profile>>,
    /// Column names per model version, from its manifest.
    schemas: HashMap<(String, u64), Vec<String>>,
}

/// What a batch produced: acks to publish, model versions whose fleet summary changed.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub acks: BTreeMap<String, Vec<u64>>,
    pub touched: Vec<(String, u64)>,
}

impl Ingest {
    pub fn new(
        state: SharedState,
        telemetry: TelemetryStore,
        counters: Arc<IngestCounters>,
    ) -> Self {
        Self {
            state,
            writer: TelemetryWriter::new(telemetry.clone()),
            telemetry,
            counters,
            references: HashMap::new(),
            schemas: HashMap::new(),
        }
    }

    /// Handles a batch; flushes before returning, so the returned acks may be published.
    pub async fn batch(&mut self, messages: Vec<Incoming>) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        for m in messages {
            self.counters
                .bytes
                .fetch_add(m.payload.len() as u64, Ordering::Relaxed);
            if let Some(device) = topic::device_of(&m.topic, "telemetry") {
                let device = device.to_owned();
                match self.record(&device, &m.payload) {
                    Ok(Some((seq, touched))) => {
                        out.acks.entry(device).or_default().push(seq);
                        for t in touched {
                            if !out.touched.contains(&t) {
                                out.touched.push(t);
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(r) => self.counters.reject(r),
                }
            } else if let Some(device) = topic::device_of(&m.topic, "health") {
                let device = device.to_owned();
                if let Err(r) = self.heartbeat(&device, &m.payload) {
                    self.counters.reject(r);
                }
            } else {
                tracing::warn!(topic = %m.topic, "telemetry on an unexpected topic ignored");
                self.counters.reject(Rejected::UnknownTopic);
            }
        }
        match self.store_group(!out.acks.is_empty()).await {
            Ok(stored) => {
                self.counters
                    .stored
                    .fetch_add(stored as u64, Ordering::Relaxed);
            }
            Err(error) => {
                // Nothing is acked: the devices send the records again.
                tracing::error!(%error, "cannot store telemetry; not acking this batch");
                out.acks.clear();
                out.touched.clear();
            }
        }
        out
    }

    /// Commits the staged group, then flushes when something is to be acked; the records
    /// stored.
    async fn store_group(&mut self, flush: bool) -> crate::error::HubResult<usize> {
        let stored = self.writer.commit()?;
        if flush {
            self.telemetry.flush().await?;
        }
        Ok(stored)
    }

    fn device(&self, id: &str, size: usize) -> Result<DeviceRecord, Rejected> {
        let limit = self.state.loaded.load().config.max_telemetry_bytes as usize;
        if size > limit {
            tracing::warn!(device = %id, size, limit, "oversize telemetry message dropped");
            return Err(Rejected::Oversize);
        }
        match self.state.store.device(id) {
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

    fn opened<T: edgefleet_common::encoding::Document>(
        &self,
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

    /// `Ok(Some(seq))`: ack it. `Ok(None)`: stored nothing and must not be acked (a storage
    /// failure: the device sends it again).
    #[allow(clippy::type_complexity)]
    fn record(
        &mut self,
        id: &str,
        payload: &[u8],
    ) -> Result<Option<(u64, Vec<(String, u64)>)>, Rejected> {
        let device = self.device(id, payload.len())?;
        let limit = self.state.loaded.load().config.max_telemetry_bytes as usize;
        let signed = unpack_record(payload, limit).map_err(|error| {
            let reason = match error {
                WireError::TooLarge { .. } => Rejected::Oversize,
                _ => Rejected::Malformed,
            };
            tracing::warn!(device = %id, %error, reason = reason.label(), "telemetry message rejected");
            reason
        })?;
        let record: TelemetryRecord = self.opened(&device, &signed)?;
        if record.device_id != id {
            tracing::warn!(device = %id, claims = %record.device_id, "telemetry published under another device's topic");
            return Err(Rejected::BadSignature);
        }
        let seq = record.seq;
        let windows = match record.validate() {
            Ok(w) => w,
            Err(error) => {
                tracing::warn!(device = %id, seq, %error, "malformed telemetry record (acked, not stored)");
                self.counters.reject(Rejected::Malformed);
                return Ok(Some((seq, vec![])));
            }
        };
        let now = crate::now();
        let retention = self.state.loaded.load().config.telemetry_retention_days * 86_400;
        if record.window_end.saturating_add(retention) < now {
            tracing::warn!(device = %id, seq, window_end = record.window_end, "telemetry older than the retention (acked, not stored)");
            self.counters.reject(Rejected::Stale);
            return Ok(Some((seq, vec![])));
        }
        for w in &windows {
            if let Err(reason) = self.check_schema(w) {
                tracing::warn!(device = %id, seq, model = %w.model, version = w.version, %reason, "telemetry window refused (acked, not stored)");
                self.counters.reject(Rejected::UnknownModel);
                return Ok(Some((seq, vec![])));
            }
        }
        let mut references = crate::telemetry::References::new();
        for w in &windows {
            let key = (w.model.clone(), w.version);
            if let Some(reference) = self.reference(&key) {
                let config = self
                    .telemetry
                    .drift_config(&w.model)
                    .unwrap_or_else(|_| DriftConfig::default());
                references.insert(key, (reference, config));
            }
        }
        match self
            .writer
            .stage(&record, &windows, &device.tags, &references, now)
        {
            Ok(Staged::Stored) => {
                self.touch(&device, now);
                Ok(Some((
                    seq,
                    windows
                        .iter()
                        .map(|w| (w.model.clone(), w.version))
                        .collect(),
                )))
            }
            Ok(Staged::Duplicate) => {
                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(device = %id, seq, "duplicate telemetry record (acked again)");
                Ok(Some((seq, vec![])))
            }
            Ok(Staged::Unmergeable(reason)) => {
                tracing::warn!(device = %id, seq, %reason, "telemetry record does not merge (acked, not stored)");
                self.counters.reject(Rejected::Unmergeable);
                Ok(Some((seq, vec![])))
            }
            Err(error) => {
                tracing::error!(device = %id, seq, %error, "cannot store telemetry; the device will send it again");
                Ok(None)
            }
        }
    }

    fn heartbeat(&mut self, id: &str, payload: &[u8]) -> Result<(), Rejected> {
        let device = self.device(id, payload.len())?;
        let hb: Heartbeat = self.opened(&device, payload)?;
        if hb.device_id != id {
            return Err(Rejected::BadSignature);
        }
        hb.validate().map_err(|error| {
            tracing::warn!(device = %id, %error, "malformed heartbeat");
            Rejected::Malformed
        })?;
        let now = crate::now();
        // Heartbeats may arrive out of order: an older one changes nothing. A last will is
        // signed when the agent starts, so it is older than the run's heartbeats; it counts
        // unless a later run has been heard from (a late will of an earlier run).
        if let Ok(Some(prev)) = self.telemetry.liveness(id) {
            let stale = if hb.online {
                prev.at > hb.at
            } else {
                prev.started_at > hb.started_at
            };
            if stale {
                return Ok(());
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
        if let Err(error) = self.telemetry.put_liveness(id, &liveness) {
            tracing::error!(%error, "cannot store a heartbeat");
        }
        if !liveness.online {
            tracing::info!(device = %id, "device went offline (MQTT last will)");
        }
        self.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
        self.touch(&device, now);
        Ok(())
    }

    fn touch(&self, device: &DeviceRecord, now: u64) {
        if device.last_seen.is_some_and(|t| t + 30 > now) {
            return; // Written at most every 30 s per device.
        }
        if let Err(error) = self.state.store.touch_device(&device.id, now) {
            tracing::warn!(%error, "cannot update last_seen");
        }
    }

    /// A window must be of a model version the hub has, with exactly the columns that
    /// version's manifest names (the rule agents profile by): otherwise it could set the
    /// schema of an hour's aggregate and make every honest window unmergeable.
    fn check_schema(
        &mut self,
        w: &edgefleet_common::telemetry::DecodedWindow,
    ) -> Result<(), String> {
        let key = (w.model.clone(), w.version);
        if !self.schemas.contains_key(&key) {
            let manifest = self
                .state
                .store
                .model(&w.model, w.version)
                .ok()
                .flatten()
                .and_then(|m| m.manifest.decode_unverified().ok())
                .ok_or_else(|| format!("the hub has no model {} v{}", w.model, w.version))?;
            let names = edgefleet_common::sketch::model_columns(&manifest)
                .into_iter()
                .map(|c| c.name)
                .collect();
            self.schemas.insert(key.clone(), names);
        }
        let expected = &self.schemas[&key];
        let got: Vec<&str> = w.profile.columns.iter().map(|c| c.name.as_str()).collect();
        // An agent that could not profile (unusable names) sends no columns at all.
        if got.is_empty() || got.iter().copied().eq(expected.iter().map(String::as_str)) {
            Ok(())
        } else {
            Err(format!(
                "columns {got:?} are not the manifest's {expected:?}"
            ))
        }
    }

    /// The reference profile of a model version, decoded once.
    fn reference(&mut self, key: &(String, u64)) -> Option<Profile> {
        if let Some(cached) = self.references.get(key) {
            return cached.clone();
        }
        let profile = self
            .state
            .store
            .model(&key.0, key.1)
            .ok()
            .flatten()
            .and_then(|m| m.manifest.decode_unverified().ok())
            .and_then(|m| m.reference_profile)
            .and_then(|b| Profile::from_bytes(&b).ok());
        // Only known versions are cached: a version pushed later gets its reference then.
        if profile.is_some() {
            self.references.insert(key.clone(), profile.clone());
        }
        profile
    }

    /// The signed ack of `seqs` for `device`.
    pub fn ack(&self, device: &str, seqs: Vec<u64>) -> Option<Vec<u8>> {
        let loaded = self.state.loaded.load();
        let ack = TelemetryAck {
            device_id: device.to_owned(),
            seqs,
            at: crate::now(),
        };
        Signed::sign(&ack, &loaded.signing_key, Some(loaded.delegation.clone()))
            .and_then(|s| s.to_bytes())
            .map_err(|error| tracing::error!(%error, "cannot sign a telemetry ack"))
            .ok()
    }
}
