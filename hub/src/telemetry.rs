//! Fleet telemetry storage: what devices reported, merged.
//!
//! Trees (in the hub's sled database):
//! - `telemetry_seen`: device \0 seq-be → window end. The dedup set: a record whose key is
//!   here was stored before (QoS 1 and the agent's resends deliver duplicates).
//! - `telemetry_agg`: model \0 version-be \0 hour-be \0 scope → [`Aggregate`], scope `*` (every
//!   device) or a device tag. Profiles and latency merged across devices and windows.
//! - `telemetry_latest`: device → [`DeviceTelemetry`], its latest window with per-model drift.
//! - `liveness`: device → [`Liveness`], from heartbeats and last wills.
//! - `drift_config`: model → [`DriftConfig`] (methods and thresholds; default Evidently's).
//!
//! Architecture invariant: a record's merge into every aggregate, its latest-window entry and
//! its dedup marker are written in one sled transaction, and the database is flushed before
//! the hub acks the record, so an acked record is stored exactly once, and a record that was
//! not acked is either wholly stored (its resend is then a duplicate) or not at all.

use std::collections::HashMap;

use edgefleet_common::device::ModelRef;
use edgefleet_common::drift::{ColumnDrift, DriftConfig, profile_drift};
use edgefleet_common::encoding;
use edgefleet_common::sketch::{LatencySketch, Profile};
use edgefleet_common::telemetry::{DecodedWindow, Health, OutboxStats, TelemetryRecord};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::error::{HubError, HubResult};

pub const HOUR: u64 = 3600;
/// The scope of the fleet-wide aggregate (a tag is never `*`).
pub const ALL: &str = "*";

/// Merged windows of one model version, hour and scope.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Aggregate {
    pub profile: Vec<u8>,
    pub latency: Vec<u8>,
    pub requests: u64,
    pub errors: u64,
    pub windows: u64,
    pub first_window_start: u64,
    pub last_window_end: u64,
}

/// An [`Aggregate`] with its sketches decoded.
#[derive(Debug, Clone)]
pub struct Merged {
    pub profile: Profile,
    pub latency: LatencySketch,
    pub requests: u64,
    pub errors: u64,
    pub windows: u64,
    pub first_window_start: u64,
    pub last_window_end: u64,
}

impl Merged {
    fn from_window(w: &DecodedWindow, start: u64, end: u64) -> Self {
        Merged {
            profile: w.profile.clone(),
            latency: w.latency.clone(),
            requests: w.requests,
            errors: w.errors,
            windows: 1,
            first_window_start: start,
            last_window_end: end,
        }
    }

    fn decode(a: &Aggregate) -> HubResult<Self> {
        Ok(Merged {
            profile: Profile::from_bytes(&a.profile)
                .map_err(|e| HubError::Internal(format!("stored aggregate: {e}")))?,
            latency: LatencySketch::try_from(a.latency.clone())
                .map_err(|e| HubError::Internal(format!("stored aggregate: {e}")))?,
            requests: a.requests,
            errors: a.errors,
            windows: a.windows,
            first_window_start: a.first_window_start,
            last_window_end: a.last_window_end,
        })
    }

    fn encode(&self) -> Aggregate {
        Aggregate {
            profile: self.profile.to_bytes(),
            latency: self.latency.clone().into(),
            requests: self.requests,
            errors: self.errors,
            windows: self.windows,
            first_window_start: self.first_window_start,
            last_window_end: self.last_window_end,
        }
    }

    /// Adds `other` in; refused (with a reason) when the profiles' columns differ.
    pub fn merge(&mut self, other: &Merged) -> Result<(), String> {
        let mut profile = self.profile.clone();
        profile.merge(&other.profile).map_err(|e| e.to_string())?;
        let mut latency = self.latency.clone();
        latency.merge(&other.latency).map_err(|e| e.to_string())?;
        self.profile = profile;
        self.latency = latency;
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.windows += other.windows;
        self.first_window_start = self.first_window_start.min(other.first_window_start);
        self.last_window_end = self.last_window_end.max(other.last_window_end);
        Ok(())
    }
}

/// Latency quantiles, milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

impl LatencyMs {
    pub fn of(s: &LatencySketch) -> Self {
        let q = |q| s.quantile_us(q).map(|us| us / 1000.0);
        LatencyMs {
            p50: q(0.5),
            p95: q(0.95),
            p99: q(0.99),
        }
    }
}

/// One model in a device's latest window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelWindowSummary {
    pub model: String,
    pub version: u64,
    pub requests: u64,
    pub errors: u64,
    pub latency_ms: LatencyMs,
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
    pub models: Vec<ModelWindowSummary>,
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

/// The outcome of [`TelemetryStore::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    Stored,
    Duplicate,
}

#[derive(Clone)]
pub struct TelemetryStore {
    db: sled::Db,
    seen: sled::Tree,
    agg: sled::Tree,
    latest: sled::Tree,
    liveness: sled::Tree,
    drift_config: sled::Tree,
}

impl std::fmt::Debug for TelemetryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TelemetryStore")
    }
}

fn encode<T: Serialize>(v: &T) -> HubResult<Vec<u8>> {
    encoding::to_bytes(v).map_err(|e| HubError::Internal(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> HubResult<T> {
    encoding::from_bytes("stored telemetry", bytes).map_err(|e| HubError::Internal(e.to_string()))
}

fn seen_key(device: &str, seq: u64) -> Vec<u8> {
    let mut k = device.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn version_prefix(model: &str, version: u64) -> Vec<u8> {
    let mut k = model.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k.push(0);
    k
}

fn agg_key(model: &str, version: u64, hour: u64, scope: &str) -> Vec<u8> {
    let mut k = version_prefix(model, version);
    k.extend_from_slice(&hour.to_be_bytes());
    k.push(0);
    k.extend_from_slice(scope.as_bytes());
    k
}

/// (model, version, hour, scope) back from an aggregate key.
fn parse_agg_key(k: &[u8]) -> Option<(String, u64, u64, String)> {
    let z = k.iter().position(|&b| b == 0)?;
    let model = std::str::from_utf8(&k[..z]).ok()?.to_owned();
    let rest = &k[z + 1..];
    let version = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let hour = u64::from_be_bytes(rest.get(9..17)?.try_into().ok()?);
    let scope = std::str::from_utf8(rest.get(18..)?).ok()?.to_owned();
    Some((model, version, hour, scope))
}

/// A reference profile and drift rules per model version, for [`TelemetryStore::commit`].
pub type References = HashMap<(String, u64), (Profile, DriftConfig)>;

impl TelemetryStore {
    pub fn open(db: &sled::Db) -> HubResult<Self> {
        Ok(Self {
            seen: db.open_tree("telemetry_seen")?,
            agg: db.open_tree("telemetry_agg")?,
            latest: db.open_tree("telemetry_latest")?,
            liveness: db.open_tree("liveness")?,
            drift_config: db.open_tree("drift_config")?,
            db: db.clone(),
        })
    }

    pub fn is_duplicate(&self, device: &str, seq: u64) -> HubResult<bool> {
        Ok(self.seen.contains_key(seen_key(device, seq))?)
    }

    /// Stores a verified record: merges each model window into the fleet-wide aggregate and
    /// one per device tag for the hour its window ended in, replaces the device's latest
    /// window (with drift against `references`), marks (device, seq) seen — all or nothing.
    /// Not flushed: the caller flushes once per batch, before acking.
    pub fn commit(
        &self,
        record: &TelemetryRecord,
        windows: &[DecodedWindow],
        tags: &[String],
        references: &References,
        received_at: u64,
    ) -> HubResult<Committed> {
        let key = seen_key(&record.device_id, record.seq);
        if self.seen.contains_key(&key)? {
            return Ok(Committed::Duplicate);
        }
        let hour = record.window_end / HOUR * HOUR;
        let summaries: Vec<ModelWindowSummary> = windows
            .iter()
            .map(|w| ModelWindowSummary {
                model: w.model.clone(),
                version: w.version,
                requests: w.requests,
                errors: w.errors,
                latency_ms: LatencyMs::of(&w.latency),
                drift: references
                    .get(&(w.model.clone(), w.version))
                    .map(|(reference, config)| profile_drift(reference, &w.profile, config))
                    .unwrap_or_default(),
            })
            .collect();
        let latest = encode(&DeviceTelemetry {
            seq: record.seq,
            window_start: record.window_start,
            window_end: record.window_end,
            received_at,
            health: record.health.clone(),
            outbox: record.outbox.clone(),
            agent_version: record.agent_version.clone(),
            models: summaries,
        })?;
        // Merged outside the transaction (decoding is the expensive part; sled may retry the
        // closure): the ingest task is the only writer of these trees, so what was read stays
        // current until the transaction commits.
        let mut scopes: Vec<&str> = vec![ALL];
        scopes.extend(tags.iter().map(String::as_str).filter(|t| *t != ALL));
        let mut writes: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for w in windows {
            let fresh = Merged::from_window(w, record.window_start, record.window_end);
            for scope in &scopes {
                let k = agg_key(&w.model, w.version, hour, scope);
                let merged = match self.agg.get(&k)? {
                    Some(bytes) => {
                        let mut m = Merged::decode(&decode::<Aggregate>(&bytes)?)?;
                        m.merge(&fresh).map_err(|e| {
                            HubError::BadRequest(format!(
                                "model {} v{}: the window does not merge with the fleet's: {e}",
                                w.model, w.version
                            ))
                        })?;
                        m
                    }
                    None => fresh.clone(),
                };
                writes.push((k, encode(&merged.encode())?));
            }
        }
        let result: Result<(), TransactionError<()>> = (&self.seen, &self.agg, &self.latest)
            .transaction(|(seen, agg, latest_tree)| {
                for (k, v) in &writes {
                    agg.insert(k.as_slice(), v.as_slice())?;
                }
                latest_tree.insert(record.device_id.as_bytes(), latest.as_slice())?;
                seen.insert(key.as_slice(), &record.window_end.to_be_bytes())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            });
        result.map_err(|e| HubError::Internal(format!("telemetry commit: {e:?}")))?;
        Ok(Committed::Stored)
    }

    pub async fn flush(&self) -> HubResult<()> {
        self.db.flush_async().await?;
        Ok(())
    }

    pub fn latest(&self, device: &str) -> HubResult<Option<DeviceTelemetry>> {
        self.latest.get(device)?.map(|v| decode(&v)).transpose()
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

    /// The merged aggregate of a model version over hours `[from, to)` for one scope.
    pub fn aggregate(
        &self,
        model: &str,
        version: u64,
        scope: &str,
        from: u64,
        to: u64,
    ) -> HubResult<Option<Merged>> {
        let prefix = version_prefix(model, version);
        let mut start = prefix.clone();
        start.extend_from_slice(&(from / HOUR * HOUR).to_be_bytes());
        let mut out: Option<Merged> = None;
        for item in self.agg.range(start..) {
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
            if s != scope {
                continue;
            }
            let m = Merged::decode(&decode::<Aggregate>(&v)?)?;
            match out.as_mut() {
                None => out = Some(m),
                Some(acc) => acc.merge(&m).map_err(HubError::Internal)?,
            }
        }
        Ok(out)
    }

    /// Model versions with data in hours `[from, to)` (fleet-wide scope).
    pub fn versions_with_data(&self, from: u64, to: u64) -> HubResult<Vec<(String, u64)>> {
        let mut out: Vec<(String, u64)> = Vec::new();
        for item in self.agg.iter().keys() {
            let k = item?;
            if let Some((model, version, hour, scope)) = parse_agg_key(&k)
                && scope == ALL
                && (from..to).contains(&hour)
                && out.last() != Some(&(model.clone(), version))
            {
                out.push((model, version));
            }
        }
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
        for item in self.agg.iter().keys() {
            let k = item?;
            if parse_agg_key(&k).is_some_and(|(_, _, hour, _)| hour + HOUR <= cutoff) {
                self.agg.remove(k)?;
                aggregates += 1;
            }
        }
        Ok((markers, aggregates))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_keys_round_trip() {
        let k = agg_key("demand", 3, 7200, "shops-eu");
        assert_eq!(
            parse_agg_key(&k),
            Some(("demand".into(), 3, 7200, "shops-eu".into()))
        );
        assert!(parse_agg_key(b"x").is_none());
    }
}
