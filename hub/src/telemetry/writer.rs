//! The one writer of the telemetry trees: records staged into groups, committed in one
//! transaction each.

use std::collections::HashMap;
use std::sync::Arc;

use edgefleet_common::drift::{DriftConfig, profile_drift};
use edgefleet_common::quality::ModelQuality;
use edgefleet_common::sample::SampleBatch;
use edgefleet_common::telemetry::{DecodedWindow, TelemetryRecord};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::aggregate::{Aggregate, Merged, MergedRef};
use super::store::{DeviceTelemetry, LatestModelWindow, TelemetryStore};
use super::{ALL, HOUR, LatencyMs};
use crate::error::{HubError, HubResult};
use crate::registry::VersionFacts;
use crate::store::keys::{agg_key, sample_key, seen_key};
use crate::store::{decode_stored, encode};

/// Per model version: what its manifest says (the reference profile) and the model's drift
/// rules, for [`TelemetryWriter::stage`].
pub type References = HashMap<(String, u64), (Arc<VersionFacts>, DriftConfig)>;

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
    /// The same for prediction quality (`telemetry_quality`, same keys).
    hot_quality: HashMap<Vec<u8>, (u64, ModelQuality)>,
    group: Group,
    /// The group holds part of a record: committing it would store half a record.
    poisoned: bool,
}

/// What one group will write.
#[derive(Default)]
struct Group {
    dirty: std::collections::HashSet<Vec<u8>>,
    dirty_quality: std::collections::HashSet<Vec<u8>>,
    /// Device → its latest window (a later record of the group replaces an earlier one).
    latest: HashMap<String, Vec<u8>>,
    /// Dedup markers: key → window end.
    seen: HashMap<Vec<u8>, u64>,
    /// Sample batches: key → bytes.
    samples: Vec<(Vec<u8>, Vec<u8>)>,
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
            hot_quality: HashMap::new(),
            group: Group::default(),
            poisoned: false,
        }
    }

    /// Records staged since the last commit.
    pub fn staged(&self) -> usize {
        self.group.seen.len()
    }

    /// Stages a verified record: merges each model window into the fleet-wide aggregate and
    /// one per other scope (the device's tags, its rollout cohort) for the hour its window
    /// ended in, replaces the device's latest
    /// window (with drift against `references`), marks (device, seq) seen. All or nothing per
    /// record; nothing reaches the disk before [`commit`](Self::commit).
    pub fn stage(
        &mut self,
        record: &TelemetryRecord,
        windows: &[DecodedWindow],
        scopes: &[String],
        references: &References,
        received_at: u64,
    ) -> HubResult<Staged> {
        let key = seen_key(&record.device_id, record.seq);
        if self.group.seen.contains_key(&key) || self.store.seen.contains_key(&key)? {
            return Ok(Staged::Duplicate);
        }
        let hour = record.window_end / HOUR * HOUR;
        let scopes: Vec<&str> = std::iter::once(ALL)
            .chain(scopes.iter().map(String::as_str).filter(|t| *t != ALL))
            .collect();
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
        let mut quality_targets = Vec::with_capacity(record.quality.len() * scopes.len());
        for (i, q) in record.quality.iter().enumerate() {
            for scope in &scopes {
                let k = agg_key(&q.model, q.version, hour, scope);
                if let Some(current) = self.load_quality(&k, hour)? {
                    let mut trial = current.clone();
                    if let Err(e) = trial.merge(q) {
                        return Ok(Staged::Unmergeable(format!(
                            "model {} v{}: the quality does not merge with the fleet's: {e}",
                            q.model, q.version
                        )));
                    }
                }
                quality_targets.push((k, i));
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
            models: latest_windows(windows, references),
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
        for (k, i) in quality_targets {
            let q = &record.quality[i];
            match self.hot_quality.get_mut(&k) {
                Some((_, current)) => {
                    if let Err(e) = current.merge(q) {
                        self.poisoned = true;
                        return Err(HubError::Internal(format!("a checked merge refused: {e}")));
                    }
                }
                None => {
                    self.hot_quality.insert(k.clone(), (hour, q.clone()));
                }
            }
            self.group.dirty_quality.insert(k);
        }
        self.group.latest.insert(record.device_id.clone(), latest);
        self.group.seen.insert(key, record.window_end);
        Ok(Staged::Stored)
    }

    /// Stages a verified sample batch: stored with its dedup marker (one sequence counter for
    /// a device's records and samples) when the group commits.
    pub fn stage_samples(&mut self, batch: &SampleBatch) -> HubResult<Staged> {
        let key = seen_key(&batch.device_id, batch.seq);
        if self.group.seen.contains_key(&key) || self.store.seen.contains_key(&key)? {
            return Ok(Staged::Duplicate);
        }
        let k = sample_key(
            &batch.model,
            batch.window_end,
            batch.version,
            &batch.device_id,
            batch.seq,
        );
        self.group.samples.push((k, encode(batch)?));
        self.group.seen.insert(key, batch.window_end);
        Ok(Staged::Stored)
    }

    /// The aggregate under `k`, read from disk into the hot set the first time.
    fn load(&mut self, k: &[u8], hour: u64) -> HubResult<Option<&Merged>> {
        if !self.hot.contains_key(k)
            && let Some(bytes) = self.store.agg.get(k)?
        {
            let m = Merged::decode(&decode_stored::<Aggregate>("stored telemetry", &bytes)?)?;
            self.hot.insert(k.to_vec(), (hour, m));
        }
        Ok(self.hot.get(k).map(|(_, m)| m))
    }

    /// The quality under `k`, read from disk into the hot set the first time.
    fn load_quality(&mut self, k: &[u8], hour: u64) -> HubResult<Option<&ModelQuality>> {
        if !self.hot_quality.contains_key(k)
            && let Some(bytes) = self.store.quality.get(k)?
        {
            let q = decode_stored::<ModelQuality>("stored telemetry", &bytes)?;
            self.hot_quality.insert(k.to_vec(), (hour, q));
        }
        Ok(self.hot_quality.get(k).map(|(_, q)| q))
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
            for k in &group.dirty_quality {
                self.hot_quality.remove(k);
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
        let mut qualities = Vec::with_capacity(group.dirty_quality.len());
        for k in &group.dirty_quality {
            let (_, q) = self
                .hot_quality
                .get(k)
                .ok_or_else(|| HubError::Internal("a staged quality is missing".into()))?;
            qualities.push((k.as_slice(), encode(q)?));
        }
        let store = &self.store;
        let result: Result<(), TransactionError<()>> = (
            &store.seen,
            &store.agg,
            &store.latest,
            &store.quality,
            &store.samples,
        )
            .transaction(|(seen, agg, latest, quality, samples)| {
                for (k, v) in &group.samples {
                    samples.insert(k.as_slice(), v.as_slice())?;
                }
                for (k, v) in &aggregates {
                    agg.insert(*k, v.as_slice())?;
                }
                for (k, v) in &qualities {
                    quality.insert(*k, v.as_slice())?;
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
        let newest = self
            .hot
            .values()
            .map(|(h, _)| *h)
            .chain(self.hot_quality.values().map(|(h, _)| *h))
            .max()
            .unwrap_or(0);
        self.hot
            .retain(|_, (h, _)| h.saturating_add(HOUR) >= newest);
        self.hot_quality
            .retain(|_, (h, _)| h.saturating_add(HOUR) >= newest);
        if self.hot.len() + self.hot_quality.len() > MAX_HOT_AGGREGATES {
            self.hot.clear();
            self.hot_quality.clear();
        }
    }
}

/// Per model of a window: counts, latency quantiles, drift against its reference.
fn latest_windows(windows: &[DecodedWindow], references: &References) -> Vec<LatestModelWindow> {
    windows
        .iter()
        .map(|w| LatestModelWindow {
            model: w.model.clone(),
            version: w.version,
            requests: w.requests,
            errors: w.errors,
            latency_ms: LatencyMs::of(&w.latency),
            drift: references
                .get(&(w.model.clone(), w.version))
                .and_then(|(facts, config)| {
                    let reference = facts.reference.as_ref()?;
                    Some(profile_drift(reference, &w.profile, config))
                })
                .unwrap_or_default(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_common::sketch::LatencySketch;
    use edgefleet_common::sketch::Profile;
    use edgefleet_common::sketch::{ColumnKind, ColumnSpec, DEFAULT_K};
    use edgefleet_common::telemetry::ModelWindow;
    use edgefleet_common::telemetry::{Health, OutboxStats};

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
            quality: vec![],
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
}
