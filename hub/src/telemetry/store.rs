//! The telemetry trees: what devices reported, merged, and the reads over them.
//!
//! Trees (in the hub's sled database):
//! - `telemetry_seen`: device \0 seq-be → window end. The dedup set: a record whose key is
//!   here was stored before (QoS 1 and the agent's resends deliver duplicates).
//! - `telemetry_agg`: model \0 version-be \0 hour-be \0 scope → [`Aggregate`], scope `*` (every
//!   device) or a device tag. Profiles and latency merged across devices and windows.
//! - `telemetry_quality`: the same keys as `telemetry_agg` → [`ModelQuality`]: prediction
//!   quality from ground truth (feedback matched on the devices), merged the same way.
//! - `telemetry_samples`: model \0 window end \0 version \0 device \0 seq → a verified
//!   [`SampleBatch`]'s postcard bytes: training samples, oldest first per model.
//! - `telemetry_latest`: device → [`DeviceTelemetry`], its latest window with per-model drift.
//! - `liveness`: device → [`Liveness`], from heartbeats and last wills.
//! - `drift_config`: model → [`DriftConfig`] (methods and thresholds; default Evidently's).
//! - `telemetry_cohorts`: device \0 model → a cohort scope (a rollout's wave): the device's
//!   windows are also merged into that scope's aggregates, so a rollout compares exactly its own
//!   devices. One per model: rollouts of different models over the same devices each keep
//!   theirs (one model's rollouts never share a device).
//!
//! Written only through [`super::TelemetryWriter`] (aggregates, latest windows, dedup markers)
//! and by the heartbeat path (liveness); read by the queries.

use edgefleet_common::device::ModelRef;
use edgefleet_common::drift::{ColumnDrift, DriftConfig};
use edgefleet_common::quality::ModelQuality;
use edgefleet_common::sample::SampleBatch;
use edgefleet_common::telemetry::{Health, OutboxStats};
use serde::{Deserialize, Serialize};

use super::aggregate::{Aggregate, Merged};
use super::{ALL, HOUR};
use crate::error::{HubError, HubResult};
use crate::store::keys::{parse_agg_key, seen_key, version_prefix};
use crate::store::{decode_stored, encode};

/// One model in a device's latest window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatestModelWindow {
    pub model: String,
    pub version: u64,
    pub requests: u64,
    pub errors: u64,
    pub latency_ms: super::LatencyMs,
    /// Per column against the model's reference profile; empty without one.
    pub drift: Vec<ColumnDrift>,
}

/// A device's latest window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceTelemetry {
    pub seq: u64,
    pub window_start: u64,
    pub window_end: u64,
    pub received_at: u64,
    pub health: Health,
    pub outbox: OutboxStats,
    pub agent_version: String,
    pub models: Vec<LatestModelWindow>,
}

/// What the latest heartbeat (or last will) said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Liveness {
    pub online: bool,
    /// The device's clock.
    pub at: u64,
    /// When the agent's current run started (its clock).
    pub started_at: u64,
    /// The hub's clock.
    pub received_at: u64,
    pub health: Option<Health>,
    pub active: Vec<ModelRef>,
    pub outbox: OutboxStats,
    pub agent_version: String,
}

#[derive(Clone)]
pub struct TelemetryStore {
    db: sled::Db,
    pub(super) seen: sled::Tree,
    pub(super) agg: sled::Tree,
    pub(super) quality: sled::Tree,
    pub(super) samples: sled::Tree,
    pub(super) latest: sled::Tree,
    liveness: sled::Tree,
    drift_config: sled::Tree,
    cohort: sled::Tree,
}

impl std::fmt::Debug for TelemetryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TelemetryStore")
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> HubResult<T> {
    decode_stored("stored telemetry", bytes)
}

impl TelemetryStore {
    pub fn open(db: &sled::Db) -> HubResult<Self> {
        Ok(Self {
            seen: db.open_tree("telemetry_seen")?,
            agg: db.open_tree("telemetry_agg")?,
            quality: db.open_tree("telemetry_quality")?,
            samples: db.open_tree("telemetry_samples")?,
            latest: db.open_tree("telemetry_latest")?,
            liveness: db.open_tree("liveness")?,
            drift_config: db.open_tree("drift_config")?,
            cohort: Self::open_cohorts(db)?,
            db: db.clone(),
        })
    }

    /// The cohorts tree. Hubs before one cohort per model kept one per device in
    /// `telemetry_cohort`; that tree only mirrors what the rollout driver sets every step, so it
    /// is dropped rather than converted.
    fn open_cohorts(db: &sled::Db) -> HubResult<sled::Tree> {
        if db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == b"telemetry_cohort")
        {
            db.drop_tree("telemetry_cohort")?;
        }
        Ok(db.open_tree("telemetry_cohorts")?)
    }

    pub fn is_duplicate(&self, device: &str, seq: u64) -> HubResult<bool> {
        Ok(self.seen.contains_key(seen_key(device, seq))?)
    }

    pub async fn flush(&self) -> HubResult<()> {
        crate::store::flush(&self.db).await
    }

    pub fn latest(&self, device: &str) -> HubResult<Option<DeviceTelemetry>> {
        self.latest.get(device)?.map(|v| decode(&v)).transpose()
    }

    /// Every device's latest window.
    pub fn all_latest(&self) -> HubResult<Vec<(String, DeviceTelemetry)>> {
        self.latest
            .iter()
            .map(|item| {
                let (k, v) = item?;
                Ok((String::from_utf8_lossy(&k).into_owned(), decode(&v)?))
            })
            .collect()
    }

    pub fn put_liveness(&self, device: &str, l: &Liveness) -> HubResult<()> {
        self.liveness.insert(device.as_bytes(), encode(l)?)?;
        Ok(())
    }

    pub fn liveness(&self, device: &str) -> HubResult<Option<Liveness>> {
        self.liveness.get(device)?.map(|v| decode(&v)).transpose()
    }

    pub fn all_liveness(&self) -> HubResult<Vec<(String, Liveness)>> {
        self.liveness
            .iter()
            .map(|item| {
                let (k, v) = item?;
                Ok((String::from_utf8_lossy(&k).into_owned(), decode(&v)?))
            })
            .collect()
    }

    /// The stored values of one model version and scope in `tree` whose hour bucket lies in
    /// `[from, to)`, in hour order: the one scan behind [`aggregate`](Self::aggregate) and
    /// [`quality`](Self::quality) (both trees have the aggregates' keys).
    fn scope_values(
        tree: &sled::Tree,
        model: &str,
        version: u64,
        scope: &str,
        (from, to): (u64, u64),
    ) -> HubResult<Vec<sled::IVec>> {
        let prefix = version_prefix(model, version);
        let mut start = prefix.clone();
        start.extend_from_slice(&(from / HOUR * HOUR).to_be_bytes());
        let mut out = Vec::new();
        for item in tree.range(start..) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let Some((_, _, hour, s)) = parse_agg_key(&k) else {
                continue;
            };
            if hour >= to {
                break;
            }
            if s == scope {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// The merged aggregate of a model version over hours `[from, to)` for one scope.
    pub fn aggregate(
        &self,
        model: &str,
        version: u64,
        scope: &str,
        from: u64,
        to: u64,
    ) -> HubResult<Option<Merged>> {
        let mut out: Option<Merged> = None;
        for v in Self::scope_values(&self.agg, model, version, scope, (from, to))? {
            let m = Merged::decode(&decode::<Aggregate>(&v)?)?;
            match out.as_mut() {
                None => out = Some(m),
                Some(acc) => acc.merge(m.as_ref()).map_err(HubError::Internal)?,
            }
        }
        Ok(out)
    }

    /// The merged prediction quality of a model version over hours `[from, to)` for one
    /// scope; none when no feedback was reported.
    pub fn quality(
        &self,
        model: &str,
        version: u64,
        scope: &str,
        from: u64,
        to: u64,
    ) -> HubResult<Option<ModelQuality>> {
        let mut out: Option<ModelQuality> = None;
        for v in Self::scope_values(&self.quality, model, version, scope, (from, to))? {
            let q: ModelQuality = decode(&v)?;
            match out.as_mut() {
                None => out = Some(q),
                Some(acc) => acc
                    .merge(&q)
                    .map_err(|e| HubError::Internal(e.to_string()))?,
            }
        }
        Ok(out)
    }

    /// Puts a device's windows of `model` in a cohort (`Some`) or takes them out (`None`).
    pub fn set_cohort(&self, device: &str, model: &str, scope: Option<&str>) -> HubResult<()> {
        let key = cohort_key(device, model);
        match scope {
            Some(s) => self.cohort.insert(key, s.as_bytes())?,
            None => self.cohort.remove(key)?,
        };
        Ok(())
    }

    /// The cohort scope the device is in for `model`, if any.
    pub fn cohort(&self, device: &str, model: &str) -> HubResult<Option<String>> {
        Ok(self
            .cohort
            .get(cohort_key(device, model))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Every cohort scope a device's windows also merge into.
    pub fn cohorts(&self, device: &str) -> HubResult<Vec<String>> {
        let mut prefix = device.as_bytes().to_vec();
        prefix.push(0);
        self.cohort
            .scan_prefix(prefix)
            .values()
            .map(|v| Ok(String::from_utf8_lossy(&v?).into_owned()))
            .collect()
    }

    /// The versions of `model` with data (windows or feedback) in `scope`, any hour.
    pub fn versions_in_scope(&self, model: &str, scope: &str) -> HubResult<Vec<u64>> {
        let mut prefix = model.as_bytes().to_vec();
        prefix.push(0);
        let mut out: Vec<u64> = Vec::new();
        // Feedback too: a version may have only ground truth in the scope.
        for k in self
            .agg
            .scan_prefix(&prefix)
            .keys()
            .chain(self.quality.scan_prefix(&prefix).keys())
        {
            if let Some((_, version, _, s)) = parse_agg_key(&k?)
                && s == scope
                && !out.contains(&version)
            {
                out.push(version);
            }
        }
        Ok(out)
    }

    /// Model versions with data in hours `[from, to)` (fleet-wide scope).
    pub fn versions_with_data(&self, from: u64, to: u64) -> HubResult<Vec<(String, u64)>> {
        let mut out: Vec<(String, u64)> = Vec::new();
        // A version may have only feedback in the range (it stopped serving).
        for item in self.agg.iter().keys().chain(self.quality.iter().keys()) {
            let k = item?;
            if let Some((model, version, hour, scope)) = parse_agg_key(&k)
                && scope == ALL
                && (from..to).contains(&hour)
                && out.last() != Some(&(model.clone(), version))
            {
                out.push((model, version));
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    pub fn drift_config(&self, model: &str) -> HubResult<DriftConfig> {
        Ok(self
            .drift_config
            .get(model)?
            .map(|v| serde_json::from_slice(&v))
            .transpose()
            .map_err(|e| HubError::Internal(format!("stored drift config: {e}")))?
            .unwrap_or_default())
    }

    pub fn put_drift_config(&self, model: &str, c: &DriftConfig) -> HubResult<()> {
        let bytes = serde_json::to_vec(c).map_err(|e| HubError::Internal(e.to_string()))?;
        self.drift_config.insert(model.as_bytes(), bytes)?;
        Ok(())
    }

    /// Every stored sample batch of `model` whose window ended in `[from, to)`, oldest first,
    /// of `version` only when given.
    pub fn sample_batches(
        &self,
        model: &str,
        version: Option<u64>,
        from: u64,
        to: u64,
    ) -> impl Iterator<Item = HubResult<SampleBatch>> + '_ {
        let mut start = model.as_bytes().to_vec();
        start.push(0);
        let mut end = start.clone();
        start.extend_from_slice(&from.to_be_bytes());
        end.extend_from_slice(&to.to_be_bytes());
        self.samples
            .range(start..end)
            .values()
            .map(|v| decode::<SampleBatch>(&v?))
            .filter(move |b| match (b, version) {
                (Ok(b), Some(v)) => b.version == v,
                _ => true,
            })
    }

    /// (batches, rows, bytes) stored for `model`.
    pub fn samples_stored(&self, model: &str) -> HubResult<(u64, u64, u64)> {
        let mut prefix = model.as_bytes().to_vec();
        prefix.push(0);
        let (mut batches, mut rows, mut bytes) = (0, 0, 0);
        for item in self.samples.scan_prefix(prefix) {
            let (_, v) = item?;
            batches += 1;
            bytes += v.len() as u64;
            rows += decode::<SampleBatch>(&v)?.rows.len() as u64;
        }
        Ok((batches, rows, bytes))
    }

    /// Drops samples whose window ended before `cutoff`, then, per model, the oldest until
    /// the model's samples fit in `max_bytes`. Returns the batches dropped.
    pub fn prune_samples(&self, cutoff: u64, max_bytes: u64) -> HubResult<usize> {
        let mut dropped = 0;
        let mut per_model: std::collections::BTreeMap<Vec<u8>, Vec<(sled::IVec, u64)>> =
            Default::default();
        for item in self.samples.iter() {
            let (k, v) = item?;
            let Some(z) = k.iter().position(|&b| b == 0) else {
                continue;
            };
            let end = k
                .get(z + 1..z + 9)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_be_bytes);
            if end < cutoff {
                self.samples.remove(&k)?;
                dropped += 1;
            } else {
                per_model
                    .entry(k[..z].to_vec())
                    .or_default()
                    .push((k, v.len() as u64));
            }
        }
        for batches in per_model.values() {
            let mut total: u64 = batches.iter().map(|(_, n)| n).sum();
            for (k, n) in batches {
                if total <= max_bytes {
                    break;
                }
                self.samples.remove(k)?;
                total -= n;
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// Drops dedup markers and aggregates older than `cutoff` (seconds since the epoch).
    pub fn prune(&self, cutoff: u64) -> HubResult<(usize, usize)> {
        let mut markers = 0;
        for item in self.seen.iter() {
            let (k, v) = item?;
            let end = <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            if end < cutoff {
                self.seen.remove(k)?;
                markers += 1;
            }
        }
        let mut aggregates = 0;
        for tree in [&self.agg, &self.quality] {
            for item in tree.iter().keys() {
                let k = item?;
                if parse_agg_key(&k).is_some_and(|(_, _, hour, _)| hour + HOUR <= cutoff) {
                    tree.remove(k)?;
                    aggregates += 1;
                }
            }
        }
        Ok((markers, aggregates))
    }
}

fn cohort_key(device: &str, model: &str) -> Vec<u8> {
    let mut key = device.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(model.as_bytes());
    key
}
