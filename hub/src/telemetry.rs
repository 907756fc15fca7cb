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
//! its dedup marker are written in one sled transaction (its group's, see [`TelemetryWriter`]),
//! and the database is flushed before the hub acks the record, so an acked record is stored
//! exactly once, and a record that was not acked is either wholly stored (its resend is then a
//! duplicate) or not at all.

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
    #[serde(with = "serde_bytes")]
    pub profile: Vec<u8>,
    #[serde(with = "serde_bytes")]
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

/// What merges into an aggregate: a window's (or another aggregate's) figures, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct MergedRef<'a> {
    pub profile: &'a Profile,
    pub latency: &'a LatencySketch,
    pub requests: u64,
    pub errors: u64,
    pub windows: u64,
    pub first_window_start: u64,
    pub last_window_end: u64,
}

impl<'a> MergedRef<'a> {
    fn window(w: &'a DecodedWindow, start: u64, end: u64) -> Self {
        MergedRef {
            profile: &w.profile,
            latency: &w.latency,
            requests: w.requests,
            errors: w.errors,
            windows: 1,
            first_window_start: start,
            last_window_end: end,
        }
    }
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

    pub fn as_ref(&self) -> MergedRef<'_> {
        MergedRef {
            profile: &self.profile,
            latency: &self.latency,
            requests: self.requests,
            errors: self.errors,
            windows: self.windows,
            first_window_start: self.first_window_start,
            last_window_end: self.last_window_end,
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

    /// Whether [`merge`](Self::merge) would accept `other`; changes nothing.
    pub fn check_merge(&self, other: MergedRef<'_>) -> Result<(), String> {
        self.profile
            .check_merge(other.profile)
            .map_err(|e| e.to_string())?;
        self.latency
            .check_merge(other.latency)
            .map_err(|e| e.to_string())
    }

    /// Adds `other` in; refused (with a reason, nothing changed) when the profiles' columns
    /// differ or a count would overflow.
    pub fn merge(&mut self, other: MergedRef<'_>) -> Result<(), String> {
        self.check_merge(other)?;
        // Each merge refuses only what the check refused, and changes nothing when it does:
        // after the check, neither can leave the other half done.
        self.profile
            .merge(other.profile)
            .map_err(|e| e.to_string())?;
        self.latency
            .merge(other.latency)
            .map_err(|e| e.to_string())?;
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

/// What [`TelemetryWriter::stage`] did with a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staged {
    /// Merged into the group; stored once the group commits.
    Stored,
    /// Stored before (or earlier in this group): nothing to do but ack it again.
    Duplicate,
    /// A window does not merge with its aggregates (columns differ, a count would overflow);
    /// nothing of the record was staged.
    Unmergeable(String),
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

/// A reference profile and drift rules per model version, for [`TelemetryWriter::stage`].
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
                Some(acc) => acc.merge(m.as_ref()).map_err(HubError::Internal)?,
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

/// Decoded aggregates kept between groups: enough for the current and the previous hour of
/// every model version and scope of a large fleet; past it the writer starts over from disk.
const MAX_HOT_AGGREGATES: usize = 512;

/// The one writer of the telemetry trees (the ingest task owns it).
///
/// Records are staged into a group, and the group is committed in one sled transaction: each
/// dirty aggregate is encoded once per group, not once per record. The aggregates of recent
/// hours stay decoded in memory between groups (they change only through this writer), so a
/// record costs a merge, not a decode, merge and re-encode of every aggregate it touches.
///
/// Architecture invariant: the hub acks a record only after the group that merged it has
/// committed and the database is flushed ([`TelemetryStore::flush`]). A group that fails to
/// commit is forgotten, with its aggregates: they are read back from disk, so memory never
/// holds a merge the disk does not.
pub struct TelemetryWriter {
    store: TelemetryStore,
    /// Aggregate key → (its hour, the aggregate as committed, plus this group's merges).
    hot: HashMap<Vec<u8>, (u64, Merged)>,
    group: Group,
    /// The group holds part of a record: committing it would store half a record.
    poisoned: bool,
}

/// What one group will write.
#[derive(Default)]
struct Group {
    dirty: std::collections::HashSet<Vec<u8>>,
    /// Device → its latest window (a later record of the group replaces an earlier one).
    latest: HashMap<String, Vec<u8>>,
    /// Dedup markers: key → window end.
    seen: HashMap<Vec<u8>, u64>,
}

impl std::fmt::Debug for TelemetryWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryWriter")
            .field("hot", &self.hot.len())
            .field("staged", &self.group.seen.len())
            .finish()
    }
}

impl TelemetryWriter {
    pub fn new(store: TelemetryStore) -> Self {
        Self {
            store,
            hot: HashMap::new(),
            group: Group::default(),
            poisoned: false,
        }
    }

    /// Records staged since the last commit.
    pub fn staged(&self) -> usize {
        self.group.seen.len()
    }

    /// Stages a verified record: merges each model window into the fleet-wide aggregate and
    /// one per device tag for the hour its window ended in, replaces the device's latest
    /// window (with drift against `references`), marks (device, seq) seen. All or nothing per
    /// record; nothing reaches the disk before [`commit`](Self::commit).
    pub fn stage(
        &mut self,
        record: &TelemetryRecord,
        windows: &[DecodedWindow],
        tags: &[String],
        references: &References,
        received_at: u64,
    ) -> HubResult<Staged> {
        let key = seen_key(&record.device_id, record.seq);
        if self.group.seen.contains_key(&key) || self.store.seen.contains_key(&key)? {
            return Ok(Staged::Duplicate);
        }
        let hour = record.window_end / HOUR * HOUR;
        let mut scopes: Vec<&str> = vec![ALL];
        scopes.extend(tags.iter().map(String::as_str).filter(|t| *t != ALL));
        // Every aggregate is checked before any is changed: a window refused by the second
        // scope must not have merged into the first.
        let mut targets = Vec::with_capacity(windows.len() * scopes.len());
        for (i, w) in windows.iter().enumerate() {
            let fresh = MergedRef::window(w, record.window_start, record.window_end);
            for scope in &scopes {
                let k = agg_key(&w.model, w.version, hour, scope);
                if let Some(current) = self.load(&k, hour)?
                    && let Err(e) = current.check_merge(fresh)
                {
                    return Ok(Staged::Unmergeable(format!(
                        "model {} v{}: the window does not merge with the fleet's: {e}",
                        w.model, w.version
                    )));
                }
                targets.push((k, i));
            }
        }
        let latest = encode(&DeviceTelemetry {
            seq: record.seq,
            window_start: record.window_start,
            window_end: record.window_end,
            received_at,
            health: record.health.clone(),
            outbox: record.outbox.clone(),
            agent_version: record.agent_version.clone(),
            models: window_summaries(windows, references),
        })?;
        for (k, i) in targets {
            let w = &windows[i];
            match self.hot.get_mut(&k) {
                Some((_, current)) => {
                    let fresh = MergedRef::window(w, record.window_start, record.window_end);
                    if let Err(e) = current.merge(fresh) {
                        // Checked above, so unreachable; if it were not, the group may hold
                        // part of this record: it must not be committed.
                        self.poisoned = true;
                        return Err(HubError::Internal(format!("a checked merge refused: {e}")));
                    }
                }
                None => {
                    let fresh = Merged::from_window(w, record.window_start, record.window_end);
                    self.hot.insert(k.clone(), (hour, fresh));
                }
            }
            self.group.dirty.insert(k);
        }
        self.group.latest.insert(record.device_id.clone(), latest);
        self.group.seen.insert(key, record.window_end);
        Ok(Staged::Stored)
    }

    /// The aggregate under `k`, read from disk into the hot set the first time.
    fn load(&mut self, k: &[u8], hour: u64) -> HubResult<Option<&Merged>> {
        if !self.hot.contains_key(k)
            && let Some(bytes) = self.store.agg.get(k)?
        {
            let m = Merged::decode(&decode::<Aggregate>(&bytes)?)?;
            self.hot.insert(k.to_vec(), (hour, m));
        }
        Ok(self.hot.get(k).map(|(_, m)| m))
    }

    /// Writes the staged group in one transaction (not flushed: the caller flushes before it
    /// acks). On an error nothing of the group is stored and its records are forgotten: the
    /// devices send them again.
    pub fn commit(&mut self) -> HubResult<usize> {
        let group = std::mem::take(&mut self.group);
        let records = group.seen.len();
        if records == 0 && !self.poisoned {
            return Ok(0);
        }
        let written = if std::mem::take(&mut self.poisoned) {
            Err(HubError::Internal(
                "the group holds part of a record; not stored".into(),
            ))
        } else {
            self.write(&group)
        };
        if written.is_err() {
            // The hot set holds this group's merges: drop them, the disk is the truth.
            for k in &group.dirty {
                self.hot.remove(k);
            }
        }
        written?;
        self.evict();
        Ok(records)
    }

    fn write(&self, group: &Group) -> HubResult<()> {
        let mut aggregates = Vec::with_capacity(group.dirty.len());
        for k in &group.dirty {
            let (_, m) = self
                .hot
                .get(k)
                .ok_or_else(|| HubError::Internal("a staged aggregate is missing".into()))?;
            aggregates.push((k.as_slice(), encode(&m.encode())?));
        }
        let store = &self.store;
        let result: Result<(), TransactionError<()>> = (&store.seen, &store.agg, &store.latest)
            .transaction(|(seen, agg, latest)| {
                for (k, v) in &aggregates {
                    agg.insert(*k, v.as_slice())?;
                }
                for (device, v) in &group.latest {
                    latest.insert(device.as_bytes(), v.as_slice())?;
                }
                for (k, end) in &group.seen {
                    seen.insert(k.as_slice(), &end.to_be_bytes())?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            });
        result.map_err(|e| HubError::Internal(format!("telemetry commit: {e:?}")))
    }

    /// Keeps the newest two hours (late windows of the last hour are common), within
    /// [`MAX_HOT_AGGREGATES`].
    fn evict(&mut self) {
        let newest = self.hot.values().map(|(h, _)| *h).max().unwrap_or(0);
        self.hot
            .retain(|_, (h, _)| h.saturating_add(HOUR) >= newest);
        if self.hot.len() > MAX_HOT_AGGREGATES {
            self.hot.clear();
        }
    }
}

/// Per model of a window: counts, latency quantiles, drift against its reference.
fn window_summaries(windows: &[DecodedWindow], references: &References) -> Vec<ModelWindowSummary> {
    windows
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
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_common::sketch::{ColumnKind, ColumnSpec, DEFAULT_K};
    use edgefleet_common::telemetry::ModelWindow;

    fn columns(names: &[&str]) -> Vec<ColumnSpec> {
        names
            .iter()
            .map(|n| ColumnSpec {
                name: (*n).into(),
                kind: ColumnKind::Numeric,
            })
            .collect()
    }

    /// A record of one window of `demand` v1 with `rows` rows over `names`, ending in the hour
    /// that starts at `hour`.
    fn record(device: &str, seq: u64, hour: u64, names: &[&str], rows: u64) -> TelemetryRecord {
        let mut profile = Profile::new(&columns(names), DEFAULT_K).expect("profile");
        let mut latency = LatencySketch::default();
        for i in 0..rows {
            let row: Vec<f64> = (0..names.len()).map(|j| (i + j as u64) as f64).collect();
            profile.update_row(&row).expect("row");
            latency.record_us(100.0 + i as f64);
        }
        TelemetryRecord {
            device_id: device.into(),
            seq,
            window_start: hour + 60,
            window_end: hour + 120,
            models: vec![ModelWindow {
                model: "demand".into(),
                version: 1,
                profile: profile.to_bytes(),
                latency: latency.into(),
                requests: rows,
                errors: 0,
            }],
            health: Health::default(),
            outbox: OutboxStats::default(),
            agent_version: "test".into(),
        }
    }

    fn stage(w: &mut TelemetryWriter, r: &TelemetryRecord, tags: &[&str]) -> Staged {
        let windows = r.validate().expect("valid");
        let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
        w.stage(r, &windows, &tags, &References::new(), 0)
            .expect("stage")
    }

    fn store() -> (tempfile::TempDir, TelemetryStore) {
        let dir = tempfile::tempdir().expect("tmp");
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .expect("db");
        let store = TelemetryStore::open(&db).expect("store");
        (dir, store)
    }

    fn windows_in(store: &TelemetryStore, scope: &str, hour: u64) -> Option<(u64, u64)> {
        store
            .aggregate("demand", 1, scope, hour, hour + HOUR)
            .expect("read")
            .map(|m| (m.windows, m.requests))
    }

    const H: u64 = 1_795_000_000 / HOUR * HOUR;

    #[test]
    fn a_group_is_stored_once_and_only_when_committed() {
        let (_dir, store) = store();
        let mut w = TelemetryWriter::new(store.clone());
        let a = record("shop-a", 1, H, &["x", "y"], 10);
        assert_eq!(stage(&mut w, &a, &["eu"]), Staged::Stored);
        // The same record again in the same group (a QoS 1 redelivery) is a duplicate.
        assert_eq!(stage(&mut w, &a, &["eu"]), Staged::Duplicate);
        assert_eq!(
            stage(&mut w, &record("shop-b", 1, H, &["x", "y"], 5), &[]),
            Staged::Stored
        );
        assert_eq!(w.staged(), 2);
        // Nothing reaches the disk before the commit.
        assert_eq!(windows_in(&store, ALL, H), None);
        assert!(store.latest("shop-a").expect("read").is_none());
        assert!(!store.is_duplicate("shop-a", 1).expect("read"));
        assert_eq!(w.commit().expect("commit"), 2);
        assert_eq!(windows_in(&store, ALL, H), Some((2, 15)));
        assert_eq!(windows_in(&store, "eu", H), Some((1, 10)));
        assert_eq!(
            store.latest("shop-b").expect("read").map(|l| l.seq),
            Some(1)
        );
        assert!(store.is_duplicate("shop-a", 1).expect("read"));
        assert_eq!(w.commit().expect("empty commit"), 0);
        // After the commit, a resend is a duplicate too.
        assert_eq!(stage(&mut w, &a, &["eu"]), Staged::Duplicate);
    }

    #[test]
    fn a_new_writer_merges_into_what_the_disk_holds() {
        let (_dir, store) = store();
        let mut w = TelemetryWriter::new(store.clone());
        stage(&mut w, &record("shop-a", 1, H, &["x"], 10), &[]);
        w.commit().expect("commit");
        drop(w);
        let mut w = TelemetryWriter::new(store.clone());
        stage(&mut w, &record("shop-a", 2, H, &["x"], 7), &[]);
        w.commit().expect("commit");
        assert_eq!(windows_in(&store, ALL, H), Some((2, 17)));
    }

    #[test]
    fn a_window_refused_by_one_scope_merges_into_none() {
        let (_dir, store) = store();
        let mut w = TelemetryWriter::new(store.clone());
        // The tag's aggregate this hour has other columns (it cannot take the window); the
        // fleet's aggregate could.
        stage(&mut w, &record("shop-a", 1, H, &["x"], 10), &[]);
        w.commit().expect("commit");
        let windows = record("shop-b", 1, H, &["other"], 3)
            .validate()
            .expect("valid");
        let other = Merged::from_window(&windows[0], H + 60, H + 120);
        store
            .agg
            .insert(
                agg_key("demand", 1, H, "eu"),
                encode(&other.encode()).expect("encode"),
            )
            .expect("insert");
        assert_eq!(windows_in(&store, "eu", H), Some((1, 3)));
        let refused = record("shop-c", 1, H, &["x"], 4);
        assert!(matches!(
            stage(&mut w, &refused, &["eu"]),
            Staged::Unmergeable(reason) if reason.contains("does not merge")
        ));
        assert_eq!(w.commit().expect("commit"), 0);
        // Neither in the fleet's aggregate on disk, nor in memory for the next group.
        assert_eq!(windows_in(&store, ALL, H), Some((1, 10)));
        stage(&mut w, &record("shop-c", 2, H, &["x"], 1), &[]);
        w.commit().expect("commit");
        assert_eq!(windows_in(&store, ALL, H), Some((2, 11)));
        assert!(!store.is_duplicate("shop-c", 1).expect("read"));
    }

    #[test]
    fn only_the_newest_two_hours_stay_decoded() {
        let (_dir, store) = store();
        let mut w = TelemetryWriter::new(store.clone());
        for (seq, hour) in [(1, H), (2, H + HOUR), (3, H + 2 * HOUR)] {
            stage(&mut w, &record("shop-a", seq, hour, &["x"], 2), &[]);
        }
        w.commit().expect("commit");
        let mut hours: Vec<u64> = w.hot.values().map(|(h, _)| *h).collect();
        hours.sort_unstable();
        assert_eq!(hours, vec![H + HOUR, H + 2 * HOUR]);
        // A late window of an evicted hour is merged from the disk.
        stage(&mut w, &record("shop-a", 4, H, &["x"], 5), &[]);
        w.commit().expect("commit");
        assert_eq!(windows_in(&store, ALL, H), Some((2, 7)));
    }

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
