//! The agent's durable state on disk, and how it is changed without ever being half-written.
//!
//! ```text
//! DATA_DIR/device.key                     ed25519 device key (PKCS#8 PEM, 0600), made on first start
//! DATA_DIR/state.json                     trust root (after rotations) + highest applied serial per model
//! DATA_DIR/active.json                    which version of each model is active, and the previous one
//! DATA_DIR/models/NAME/VERSION/           manifest.bin (postcard Signed<ModelManifest>) + model.onnx
//! DATA_DIR/staging/SHA256.part            a download in progress (resumed with HTTP Range)
//! DATA_DIR/outbox/                        sled: signed telemetry records until the hub acks them
//! ```
//! Invariants: a `models/NAME/VERSION` directory only ever appears by an atomic rename of a
//! complete, fsynced, hash-verified directory; `state.json` and `active.json` only change by
//! atomic rename of an fsynced temp file. So after kill -9 at any point the agent finds either
//! the old or the new state, and every referenced model is whole.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use edgefleet_common::{ModelManifest, SecretKey, Signed, TrustRoot};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{AgentError, AgentResult};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrustState {
    pub root: TrustRoot,
    /// Highest assignment serial applied, per model: older ones are replays.
    pub serials: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ActiveModel {
    pub version: u64,
    pub previous: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ActiveSet {
    pub models: BTreeMap<String, ActiveModel>,
}

#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn device_key_path(&self) -> PathBuf {
        self.root.join("device.key")
    }
    pub fn state(&self) -> PathBuf {
        self.root.join("state.json")
    }
    /// Pending removals and the newest assigned-set serial (`RemovalState`).
    pub fn removals(&self) -> PathBuf {
        self.root.join("removals.json")
    }
    pub fn active(&self) -> PathBuf {
        self.root.join("active.json")
    }
    pub fn models(&self) -> PathBuf {
        self.root.join("models")
    }
    pub fn model_dir(&self, name: &str, version: u64) -> PathBuf {
        self.models().join(name).join(version.to_string())
    }
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }
    /// The telemetry outbox (a sled database).
    pub fn outbox(&self) -> PathBuf {
        self.root.join("outbox")
    }

    /// The feedback matching store (SQLite, with its `-wal` and `-shm` files beside it).
    pub fn feedback(&self) -> PathBuf {
        self.root.join("feedback.sqlite")
    }

    pub fn create_dirs(&self) -> AgentResult<()> {
        for d in [self.root.clone(), self.models(), self.staging()] {
            std::fs::create_dir_all(&d)?;
        }
        Ok(())
    }
}

/// What unassigning keeps across restarts: the models the hub's signed assigned set no
/// longer names and since when (unix seconds), and the newest set's serial. A restart then
/// neither starts a grace period over nor takes an older set for news.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RemovalState {
    pub assigned_serial: u64,
    pub unassigned: BTreeMap<String, u64>,
}

/// fsyncs a directory so a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> AgentResult<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Writes a file atomically: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> AgentResult<()> {
    let dir = path
        .parent()
        .ok_or_else(|| AgentError::Other(format!("{} has no parent", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

fn read_json<T: DeserializeOwned>(path: &Path) -> AgentResult<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AgentError::Other(format!("{} is corrupt: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> AgentResult<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| AgentError::Other(e.to_string()))?;
    write_atomic(path, &bytes, 0o644)
}

impl Layout {
    /// The trust state, initialised from the pinned root on first start.
    pub fn load_trust(&self, pinned: &edgefleet_common::PublicKey) -> AgentResult<TrustState> {
        match read_json::<TrustState>(&self.state())? {
            Some(s) => Ok(s),
            None => {
                let s = TrustState {
                    root: TrustRoot::new(*pinned),
                    serials: BTreeMap::new(),
                };
                self.save_trust(&s)?;
                Ok(s)
            }
        }
    }

    pub fn save_trust(&self, s: &TrustState) -> AgentResult<()> {
        write_json(&self.state(), s)
    }

    pub fn load_removals(&self) -> AgentResult<RemovalState> {
        Ok(read_json(&self.removals())?.unwrap_or_default())
    }

    pub fn save_removals(&self, r: &RemovalState) -> AgentResult<()> {
        write_json(&self.removals(), r)
    }

    pub fn load_active(&self) -> AgentResult<ActiveSet> {
        Ok(read_json(&self.active())?.unwrap_or_default())
    }

    pub fn save_active(&self, a: &ActiveSet) -> AgentResult<()> {
        write_json(&self.active(), a)
    }

    /// The device key, generated (0600) on first start; refused if others can read it.
    pub fn load_or_create_device_key(&self) -> AgentResult<SecretKey> {
        let path = self.device_key_path();
        match std::fs::read_to_string(&path) {
            Ok(pem) => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
                    if mode & 0o077 != 0 {
                        return Err(AgentError::Other(format!(
                            "device key {} has mode {mode:o}; run `chmod 600 {}`",
                            path.display(),
                            path.display()
                        )));
                    }
                }
                Ok(SecretKey::from_pem(&pem)?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SecretKey::generate()?;
                write_atomic(&path, key.to_pem()?.as_bytes(), 0o600)?;
                tracing::info!(public_key = %key.public(), "generated a new device key");
                Ok(key)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Installs a verified artifact and its manifest as `models/NAME/VERSION`, atomically.
    pub fn install(
        &self,
        signed: &Signed<ModelManifest>,
        m: &ModelManifest,
        artifact: &Path,
    ) -> AgentResult<PathBuf> {
        let parent = self.models().join(&m.name);
        std::fs::create_dir_all(&parent)?;
        let final_dir = self.model_dir(&m.name, m.version);
        let tmp = parent.join(format!(".{}.tmp", m.version));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir(&tmp)?;
        write_atomic(&tmp.join("manifest.bin"), &signed.to_bytes()?, 0o644)?;
        std::fs::rename(artifact, tmp.join("model.onnx"))?;
        std::fs::File::open(tmp.join("model.onnx"))?.sync_all()?;
        sync_dir(&tmp)?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir)?;
        }
        std::fs::rename(&tmp, &final_dir)?;
        sync_dir(&parent)?;
        Ok(final_dir)
    }

    /// Deletes every installed version of `name` (a model no longer assigned). Called after
    /// `active.json` stopped naming it, so a crash midway leaves only unreferenced files,
    /// which the next garbage collection removes.
    pub fn remove_model(&self, name: &str) -> AgentResult<()> {
        let dir = self.models().join(name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => sync_dir(&self.models()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes installed versions that are neither active nor previous, and stale temp dirs.
    pub fn collect_garbage(&self, active: &ActiveSet) -> AgentResult<()> {
        let Ok(names) = std::fs::read_dir(self.models()) else {
            return Ok(());
        };
        for name in names.flatten() {
            let model = name.file_name().to_string_lossy().into_owned();
            let keep: Vec<String> = active
                .models
                .get(&model)
                .map(|a| {
                    [Some(a.version), a.previous]
                        .into_iter()
                        .flatten()
                        .map(|v| v.to_string())
                        .collect()
                })
                .unwrap_or_default();
            for v in std::fs::read_dir(name.path())?.flatten() {
                let file = v.file_name().to_string_lossy().into_owned();
                if !keep.contains(&file) {
                    tracing::debug!(model, version = file, "removing old model version");
                    let _ = std::fs::remove_dir_all(v.path());
                }
            }
        }
        Ok(())
    }
}
