//! The hub's storage: metadata in sled, artifacts as content-addressed files.
//!
//! Trees: `models` (name \0 version-be → ModelRecord), `devices` (id → DeviceRecord), `desired`
//! (target \0 model → DesiredRecord), `issued` (device \0 model → Signed<Assignment> bytes),
//! `sessions` (sha256(token) → SessionRecord), `meta` (counters). Artifacts live under
//! `blobs/sha256/<hex>`, written to `tmp/` first, fsynced, then renamed: a blob that exists is
//! whole and has the hash it is named by.

use std::path::{Path, PathBuf};

use edgefleet_common::device::{DeviceStatus, ModelRef};
use edgefleet_common::{Assignment, Digest, ModelManifest, PublicKey, Signed, Target, encoding};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{HubError, HubResult};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelRecord {
    pub manifest: Signed<ModelManifest>,
    pub uploaded_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceRecord {
    pub id: String,
    pub public_key: PublicKey,
    pub tags: Vec<String>,
    pub hostname: String,
    pub agent_version: String,
    pub approved: bool,
    pub enrolled_at: u64,
    pub last_seen: Option<u64>,
    pub status: Option<DeviceStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DesiredRecord {
    pub target: Target,
    pub model: String,
    pub version: u64,
    pub set_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub device_id: String,
    pub expires_at: u64,
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    models: sled::Tree,
    devices: sled::Tree,
    desired: sled::Tree,
    issued: sled::Tree,
    sessions: sled::Tree,
    challenges: sled::Tree,
    meta: sled::Tree,
    blob_dir: PathBuf,
    tmp_dir: PathBuf,
}

fn encode<T: Serialize>(v: &T) -> HubResult<Vec<u8>> {
    encoding::to_bytes(v).map_err(|e| HubError::Internal(e.to_string()))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> HubResult<T> {
    // Our own records: a decode failure means corruption, not bad input.
    encoding::from_bytes("stored record", bytes).map_err(|e| HubError::Internal(e.to_string()))
}

fn model_key(name: &str, version: u64) -> Vec<u8> {
    let mut k = name.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn pair_key(a: &str, b: &str) -> Vec<u8> {
    let mut k = a.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
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
            meta: db.open_tree("meta")?,
            db,
            blob_dir,
            tmp_dir,
        })
    }

    /// The database, for the other stores that live in it ([`crate::telemetry`]).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    pub async fn flush(&self) -> HubResult<()> {
        self.db.flush_async().await?;
        Ok(())
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

    /// Stores a new version; fails if it is not above every stored version of the name.
    pub fn insert_model(&self, record: &ModelRecord, name: &str, version: u64) -> HubResult<()> {
        let value = encode(record)?;
        let key = model_key(name, version);
        // Serialise version checks with a compare-and-swap on a per-name latest marker.
        let latest_key = pair_key("latest", name);
        loop {
            let current = self.meta.get(&latest_key)?;
            let current_v = current
                .as_ref()
                .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            if version <= current_v {
                return Err(HubError::Conflict(format!(
                    "model {name} already has version {current_v}; versions must strictly increase (use {})",
                    current_v + 1
                )));
            }
            if self
                .meta
                .compare_and_swap(&latest_key, current, Some(&version.to_be_bytes()[..]))?
                .is_ok()
            {
                break;
            }
        }
        self.models.insert(key, value)?;
        Ok(())
    }

    pub fn models(&self) -> HubResult<Vec<ModelRecord>> {
        self.models.iter().values().map(|v| decode(&v?)).collect()
    }

    // ---- devices ----

    pub fn device(&self, id: &str) -> HubResult<Option<DeviceRecord>> {
        self.devices.get(id)?.map(|v| decode(&v)).transpose()
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
            let mut d: DeviceRecord = decode(&current)?;
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
        self.devices.iter().values().map(|v| decode(&v?)).collect()
    }

    // ---- desired state and issued assignments ----

    pub fn set_desired(&self, d: &DesiredRecord) -> HubResult<()> {
        self.desired
            .insert(pair_key(&d.target.to_string(), &d.model), encode(d)?)?;
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

    /// The next assignment serial; durable before it is used so a serial is never reused.
    pub fn next_serial(&self) -> HubResult<u64> {
        let v = self.meta.update_and_fetch("serial", |old| {
            let n = old
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            Some((n + 1).to_be_bytes().to_vec())
        })?;
        self.db.flush()?;
        v.and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| HubError::Internal("serial counter missing".into()))
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

/// Which model versions a device should serve: device targets win over tag targets; among tags
/// the most recently set wins.
pub fn resolve_desired(all: &[DesiredRecord], device: &DeviceRecord) -> Vec<ModelRef> {
    let mut chosen: std::collections::BTreeMap<&str, (&DesiredRecord, bool)> = Default::default();
    for d in all {
        if !d.target.matches(&device.id, &device.tags) {
            continue;
        }
        let is_device = matches!(d.target, Target::Device(_));
        let better = match chosen.get(d.model.as_str()) {
            None => true,
            Some((old, old_is_device)) => {
                (is_device && !old_is_device)
                    || (is_device == *old_is_device && d.set_at >= old.set_at)
            }
        };
        if better {
            chosen.insert(&d.model, (d, is_device));
        }
    }
    chosen
        .values()
        .map(|(d, _)| ModelRef {
            name: d.model.clone(),
            version: d.version,
        })
        .collect()
}
