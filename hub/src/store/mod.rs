//! The hub's storage: metadata in sled, artifacts as content-addressed files. No rules live
//! here: the domain modules (`registry`, `devices`, `desired`, `telemetry`) decide what may be
//! written; this module only keeps it, with the atomicity they need.
//!
//! Trees: `models` (name \0 version-be → ModelRecord), `devices` (id → DeviceRecord), `desired`
//! (target \0 model → DesiredRecord), `issued` (device \0 model → Signed<Assignment> bytes),
//! `sessions` (sha256(token) → SessionRecord), `rollouts` (id-be → JSON), `rollout_audit`
//! (id-be, sequence-be → JSON), `windows` (device → WindowOrder: the telemetry window a rollout
//! asks of it), `issued_windows` (device → Signed<WindowInstruction>), `issued_sets` (device →
//! Signed<AssignedSet>), `capture_policies` (model → JSON [`CapturePolicy`]: the samples an
//! admin asked for), `issued_captures` (device \0 model → Signed<CaptureInstruction>),
//! `retrain_policies` (model → JSON), `retrain_jobs` (id-be → JSON), `retrain_runs` (id-be →
//! JSON), `meta` (counters). Artifacts live under
//! `blobs/sha256/<hex>`, written to `tmp/` first, fsynced, then renamed: a blob that exists is
//! whole and has the hash it is named by.

use std::path::{Path, PathBuf};

use edgefleet_common::device::{AssignedSet, WindowInstruction};
use edgefleet_common::sample::CaptureInstruction;
use edgefleet_common::{Assignment, Digest, Signed, encoding};
use serde::{Serialize, de::DeserializeOwned};

use crate::error::{HubError, HubResult};

pub mod keys;
mod records;

use keys::{model_key, pair_key};

pub use records::{
    CapturePolicy, DesiredRecord, DeviceRecord, ModelRecord, SessionRecord, WindowOrder,
};

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    models: sled::Tree,
    devices: sled::Tree,
    desired: sled::Tree,
    issued: sled::Tree,
    sessions: sled::Tree,
    challenges: sled::Tree,
    rollouts: sled::Tree,
    rollout_audit: sled::Tree,
    windows: sled::Tree,
    issued_windows: sled::Tree,
    issued_sets: sled::Tree,
    capture_policies: sled::Tree,
    issued_captures: sled::Tree,
    retrain_policies: sled::Tree,
    retrain_jobs: sled::Tree,
    retrain_runs: sled::Tree,
    meta: sled::Tree,
    blob_dir: PathBuf,
    tmp_dir: PathBuf,
}

/// A value as the hub stores it (postcard).
pub fn encode<T: Serialize>(v: &T) -> HubResult<Vec<u8>> {
    encoding::to_bytes(v).map_err(|e| HubError::Internal(e.to_string()))
}

/// A stored value back; `what` names it in the error. The hub wrote it, so a failure means
/// corruption, not bad input: an internal error.
pub fn decode_stored<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> HubResult<T> {
    encoding::from_bytes(what, bytes).map_err(|e| HubError::Internal(e.to_string()))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> HubResult<T> {
    decode_stored("stored record", bytes)
}

impl Store {
    pub fn open(data_dir: &Path) -> HubResult<Self> {
        let db = sled::Config::new()
            .path(data_dir.join("meta.sled"))
            .open()?;
        let blob_dir = data_dir.join("blobs").join("sha256");
        let tmp_dir = data_dir.join("tmp");
        std::fs::create_dir_all(&blob_dir)?;
        std::fs::create_dir_all(&tmp_dir)?;
        // Leftovers of uploads interrupted by a crash are never referenced: clear them.
        for entry in std::fs::read_dir(&tmp_dir)?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(Self {
            models: db.open_tree("models")?,
            devices: db.open_tree("devices")?,
            desired: db.open_tree("desired")?,
            issued: db.open_tree("issued")?,
            sessions: db.open_tree("sessions")?,
            challenges: db.open_tree("challenges")?,
            rollouts: db.open_tree("rollouts")?,
            rollout_audit: db.open_tree("rollout_audit")?,
            windows: db.open_tree("windows")?,
            issued_windows: db.open_tree("issued_windows")?,
            issued_sets: db.open_tree("issued_sets")?,
            capture_policies: db.open_tree("capture_policies")?,
            issued_captures: db.open_tree("issued_captures")?,
            retrain_policies: db.open_tree("retrain_policies")?,
            retrain_jobs: db.open_tree("retrain_jobs")?,
            retrain_runs: db.open_tree("retrain_runs")?,
            meta: db.open_tree("meta")?,
            db,
            blob_dir,
            tmp_dir,
        })
    }

    /// The database, for the trees the telemetry store keeps in it.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    pub async fn flush(&self) -> HubResult<()> {
        flush(&self.db).await
    }

    // ---- blobs ----

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir.join(digest.to_hex())
    }

    pub fn tmp_path(&self) -> HubResult<PathBuf> {
        let mut r = [0u8; 16];
        getrandom::fill(&mut r).map_err(|e| HubError::Internal(e.to_string()))?;
        Ok(self.tmp_dir.join(hex::encode(r)))
    }

    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        std::fs::metadata(self.blob_path(digest))
            .ok()
            .map(|m| m.len())
    }

    // ---- models ----

    pub fn model(&self, name: &str, version: u64) -> HubResult<Option<ModelRecord>> {
        self.models
            .get(model_key(name, version))?
            .map(|v| decode(&v))
            .transpose()
    }

    pub fn latest_version(&self, name: &str) -> HubResult<Option<u64>> {
        let mut prefix = name.as_bytes().to_vec();
        prefix.push(0);
        match self.models.scan_prefix(&prefix).keys().next_back() {
            Some(k) => {
                let k = k?;
                let tail: [u8; 8] = k[prefix.len()..]
                    .try_into()
                    .map_err(|_| HubError::Internal("corrupt model key".into()))?;
                Ok(Some(u64::from_be_bytes(tail)))
            }
            None => Ok(None),
        }
    }

    /// Stores a new version if it is above every version of the name stored so far (checked
    /// and claimed atomically, so two concurrent publishers cannot both get one version).
    /// `Ok(Err(latest))` when it is not.
    pub fn insert_model_above_latest(
        &self,
        record: &ModelRecord,
        name: &str,
        version: u64,
    ) -> HubResult<Result<(), u64>> {
        let value = encode(record)?;
        let latest_key = pair_key("latest", name);
        loop {
            let current = self.meta.get(&latest_key)?;
            let current_v = current
                .as_ref()
                .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            if version <= current_v {
                return Ok(Err(current_v));
            }
            if self
                .meta
                .compare_and_swap(&latest_key, current, Some(&version.to_be_bytes()[..]))?
                .is_ok()
            {
                break;
            }
        }
        self.models.insert(model_key(name, version), value)?;
        Ok(Ok(()))
    }

    pub fn models(&self) -> HubResult<Vec<ModelRecord>> {
        self.models.iter().values().map(|v| decode(&v?)).collect()
    }

    // ---- devices ----

    pub fn device(&self, id: &str) -> HubResult<Option<DeviceRecord>> {
        self.devices
            .get(id)?
            .map(|v| DeviceRecord::decode(&v))
            .transpose()
    }

    pub fn put_device(&self, d: &DeviceRecord) -> HubResult<()> {
        self.devices.insert(d.id.as_bytes(), encode(d)?)?;
        Ok(())
    }

    /// Sets `last_seen` alone (compare-and-swap), so a concurrent re-enrollment or status
    /// report is never overwritten with an older copy of the record.
    pub fn touch_device(&self, id: &str, now: u64) -> HubResult<()> {
        loop {
            let Some(current) = self.devices.get(id)? else {
                return Ok(());
            };
            let mut d = DeviceRecord::decode(&current)?;
            d.last_seen = Some(now);
            if self
                .devices
                .compare_and_swap(id, Some(current), Some(encode(&d)?))?
                .is_ok()
            {
                return Ok(());
            }
        }
    }

    pub fn devices(&self) -> HubResult<Vec<DeviceRecord>> {
        self.devices
            .iter()
            .values()
            .map(|v| DeviceRecord::decode(&v?))
            .collect()
    }

    // ---- desired state and issued assignments ----

    pub fn set_desired(&self, d: &DesiredRecord) -> HubResult<()> {
        self.desired
            .insert(pair_key(&d.target.to_string(), &d.model), encode(d)?)?;
        Ok(())
    }

    pub fn remove_desired(&self, target: &edgefleet_common::Target, model: &str) -> HubResult<()> {
        self.desired.remove(pair_key(&target.to_string(), model))?;
        Ok(())
    }

    pub fn desired(&self) -> HubResult<Vec<DesiredRecord>> {
        self.desired.iter().values().map(|v| decode(&v?)).collect()
    }

    pub fn issued(&self, device: &str, model: &str) -> HubResult<Option<Signed<Assignment>>> {
        self.issued
            .get(pair_key(device, model))?
            .map(|v| decode(&v))
            .transpose()
    }

    pub fn put_issued(&self, device: &str, a: &Signed<Assignment>) -> HubResult<()> {
        let model = a.decode_unverified()?.model;
        self.issued.insert(pair_key(device, &model), encode(a)?)?;
        Ok(())
    }

    // ---- telemetry windows asked of devices ----

    /// Makes `orders` the telemetry windows asked of devices: removes the others. Returns
    /// whether anything changed.
    pub fn replace_windows(
        &self,
        orders: &std::collections::BTreeMap<String, WindowOrder>,
    ) -> HubResult<bool> {
        let mut changed = false;
        for k in self.windows.iter().keys() {
            let k = k?;
            if !orders.contains_key(String::from_utf8_lossy(&k).as_ref()) {
                self.windows.remove(k)?;
                changed = true;
            }
        }
        for (device, order) in orders {
            let bytes = encode(order)?;
            if self.windows.get(device)?.as_deref() != Some(&bytes[..]) {
                self.windows.insert(device.as_bytes(), bytes)?;
                changed = true;
            }
        }
        Ok(changed)
    }

    pub fn window_order(&self, device: &str) -> HubResult<Option<WindowOrder>> {
        self.windows.get(device)?.map(|v| decode(&v)).transpose()
    }

    pub fn window_orders(&self) -> HubResult<Vec<(String, WindowOrder)>> {
        self.windows
            .iter()
            .map(|item| {
                let (k, v) = item?;
                Ok((String::from_utf8_lossy(&k).into_owned(), decode(&v)?))
            })
            .collect()
    }

    pub fn issued_window(&self, device: &str) -> HubResult<Option<Signed<WindowInstruction>>> {
        self.issued_windows
            .get(device)?
            .map(|v| decode(&v))
            .transpose()
    }

    pub fn issued_set(&self, device: &str) -> HubResult<Option<Signed<AssignedSet>>> {
        self.issued_sets
            .get(device)?
            .map(|v| decode(&v))
            .transpose()
    }

    pub fn put_issued_set(&self, device: &str, s: &Signed<AssignedSet>) -> HubResult<()> {
        self.issued_sets.insert(device.as_bytes(), encode(s)?)?;
        Ok(())
    }

    /// The models the device has an issued assignment for.
    pub fn issued_models(&self, device: &str) -> HubResult<Vec<String>> {
        let prefix = pair_key(device, "");
        self.issued
            .scan_prefix(&prefix)
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?[prefix.len()..]).into_owned()))
            .collect()
    }

    /// Forgets the device's issued assignment of `model` (no longer assigned): a later
    /// assignment of the same version is signed afresh with a new serial, not reused (the
    /// device refuses a serial it already used).
    pub fn remove_issued(&self, device: &str, model: &str) -> HubResult<()> {
        self.issued.remove(pair_key(device, model))?;
        Ok(())
    }

    pub fn put_issued_window(&self, device: &str, w: &Signed<WindowInstruction>) -> HubResult<()> {
        self.issued_windows.insert(device.as_bytes(), encode(w)?)?;
        Ok(())
    }

    pub fn capture_policy(&self, model: &str) -> HubResult<Option<CapturePolicy>> {
        self.capture_policies
            .get(model)?
            .map(|v| {
                serde_json::from_slice(&v)
                    .map_err(|e| HubError::Internal(format!("stored capture policy: {e}")))
            })
            .transpose()
    }

    /// Sets (`Some`) or clears a model's capture policy.
    pub fn put_capture_policy(&self, model: &str, p: Option<&CapturePolicy>) -> HubResult<()> {
        match p {
            Some(p) => {
                let json = serde_json::to_vec(p).map_err(|e| HubError::Internal(e.to_string()))?;
                self.capture_policies.insert(model.as_bytes(), json)?;
            }
            None => {
                self.capture_policies.remove(model.as_bytes())?;
            }
        }
        Ok(())
    }

    pub fn issued_capture(
        &self,
        device: &str,
        model: &str,
    ) -> HubResult<Option<Signed<CaptureInstruction>>> {
        self.issued_captures
            .get(pair_key(device, model))?
            .map(|v| decode(&v))
            .transpose()
    }

    pub fn put_issued_capture(
        &self,
        device: &str,
        model: &str,
        c: &Signed<CaptureInstruction>,
    ) -> HubResult<()> {
        self.issued_captures
            .insert(pair_key(device, model), encode(c)?)?;
        Ok(())
    }

    pub fn remove_issued_capture(&self, device: &str, model: &str) -> HubResult<()> {
        self.issued_captures.remove(pair_key(device, model))?;
        Ok(())
    }

    /// The next assignment serial; durable before it is used so a serial is never reused.
    pub fn next_serial(&self) -> HubResult<u64> {
        self.next_counter("serial")
    }

    /// The next value of a durable counter (1, 2, …), flushed before it is returned.
    fn next_counter(&self, name: &str) -> HubResult<u64> {
        let v = self.meta.update_and_fetch(name, |old| {
            let n = old
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            Some((n + 1).to_be_bytes().to_vec())
        })?;
        self.db.flush()?;
        v.and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| HubError::Internal(format!("counter {name} missing")))
    }

    // ---- rollouts (JSON documents: their shape grows with the rollout rules) ----

    pub fn next_rollout_id(&self) -> HubResult<u64> {
        self.next_counter("rollout")
    }

    pub fn put_rollout(&self, id: u64, json: &[u8]) -> HubResult<()> {
        self.rollouts.insert(id.to_be_bytes(), json)?;
        Ok(())
    }

    pub fn rollout(&self, id: u64) -> HubResult<Option<Vec<u8>>> {
        Ok(self.rollouts.get(id.to_be_bytes())?.map(|v| v.to_vec()))
    }

    /// Every rollout, oldest first.
    pub fn rollouts(&self) -> HubResult<Vec<Vec<u8>>> {
        json_values(&self.rollouts)
    }

    /// Appends to a rollout's audit log (ordered by insertion).
    pub fn append_audit(&self, id: u64, json: &[u8]) -> HubResult<()> {
        let mut key = id.to_be_bytes().to_vec();
        key.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
        self.rollout_audit.insert(key, json)?;
        Ok(())
    }

    pub fn audit(&self, id: u64) -> HubResult<Vec<Vec<u8>>> {
        self.rollout_audit
            .scan_prefix(id.to_be_bytes())
            .values()
            .map(|v| Ok(v?.to_vec()))
            .collect()
    }

    // ---- retraining (JSON documents, like rollouts) ----

    pub fn next_job_id(&self) -> HubResult<u64> {
        self.next_counter("retrain_job")
    }

    pub fn next_run_id(&self) -> HubResult<u64> {
        self.next_counter("retrain_run")
    }

    pub fn retrain_policy(&self, model: &str) -> HubResult<Option<Vec<u8>>> {
        Ok(self.retrain_policies.get(model)?.map(|v| v.to_vec()))
    }

    /// Every model's policy, by model name.
    pub fn retrain_policies(&self) -> HubResult<Vec<Vec<u8>>> {
        json_values(&self.retrain_policies)
    }

    /// Sets (`Some`) or clears a model's retraining policy.
    pub fn put_retrain_policy(&self, model: &str, json: Option<&[u8]>) -> HubResult<()> {
        match json {
            Some(j) => self.retrain_policies.insert(model, j)?,
            None => self.retrain_policies.remove(model)?,
        };
        Ok(())
    }

    pub fn put_job(&self, id: u64, json: &[u8]) -> HubResult<()> {
        self.retrain_jobs.insert(id.to_be_bytes(), json)?;
        Ok(())
    }

    pub fn job(&self, id: u64) -> HubResult<Option<Vec<u8>>> {
        Ok(self.retrain_jobs.get(id.to_be_bytes())?.map(|v| v.to_vec()))
    }

    /// Every job, oldest first.
    pub fn jobs(&self) -> HubResult<Vec<Vec<u8>>> {
        json_values(&self.retrain_jobs)
    }

    pub fn put_run(&self, id: u64, json: &[u8]) -> HubResult<()> {
        self.retrain_runs.insert(id.to_be_bytes(), json)?;
        Ok(())
    }

    pub fn run(&self, id: u64) -> HubResult<Option<Vec<u8>>> {
        Ok(self.retrain_runs.get(id.to_be_bytes())?.map(|v| v.to_vec()))
    }

    /// Every run, oldest first.
    pub fn runs(&self) -> HubResult<Vec<Vec<u8>>> {
        json_values(&self.retrain_runs)
    }

    // ---- sessions ----

    fn put_expiring(tree: &sled::Tree, key: &[u8], device: &str, expires_at: u64) -> HubResult<()> {
        let record = SessionRecord {
            device_id: device.into(),
            expires_at,
        };
        tree.insert(key, encode(&record)?)?;
        Ok(())
    }

    pub fn put_challenge(&self, nonce: &[u8], device: &str, expires_at: u64) -> HubResult<()> {
        Self::put_expiring(&self.challenges, nonce, device, expires_at)
    }

    /// Consumes a challenge (single use).
    pub fn take_challenge(&self, nonce: &[u8]) -> HubResult<Option<SessionRecord>> {
        self.challenges
            .remove(nonce)?
            .map(|v| decode(&v))
            .transpose()
    }

    pub fn put_session(&self, token_hash: &Digest, device: &str, expires_at: u64) -> HubResult<()> {
        Self::put_expiring(&self.sessions, &token_hash.0, device, expires_at)
    }

    pub fn session(&self, token_hash: &Digest) -> HubResult<Option<SessionRecord>> {
        self.sessions
            .get(token_hash.0)?
            .map(|v| decode(&v))
            .transpose()
    }

    /// Drops expired sessions and challenges.
    pub fn purge_expired(&self, now: u64) -> HubResult<()> {
        for tree in [&self.sessions, &self.challenges] {
            for item in tree.iter() {
                let (k, v) = item?;
                if decode::<SessionRecord>(&v)
                    .map(|s| s.expires_at <= now)
                    .unwrap_or(true)
                {
                    tree.remove(k)?;
                }
            }
        }
        Ok(())
    }
}

/// Every value of a tree of JSON documents, in key order.
fn json_values(tree: &sled::Tree) -> HubResult<Vec<Vec<u8>>> {
    tree.iter().values().map(|v| Ok(v?.to_vec())).collect()
}

/// Makes every write so far durable, on the blocking pool. Not sled's `flush_async`: in sled
/// 0.34 concurrent `flush_async` calls can miss their wake-up and hang forever
/// (spacejam/sled#1308, #1241), and the hub flushes from several tasks at once (the rollout
/// driver, assignment commits, the telemetry writer). The blocking `flush` serialises inside
/// sled and always returns.
pub async fn flush(db: &sled::Db) -> HubResult<()> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || db.flush())
        .await
        .map_err(|e| HubError::Internal(format!("flush task: {e}")))??;
    Ok(())
}
