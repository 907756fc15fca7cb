//! The update loop: fetch assignments → verify → download → verify → load → smoke-test →
//! swap → persist → report. Any failure keeps the current model serving and is retried with
//! backoff and jitter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edgefleet_common::device::{AssignmentBundle, DeviceStatus, ModelRef};
use edgefleet_common::{Assignment, ModelManifest, Signed};
use tokio::sync::Mutex;

use crate::config::AgentConfig;
use crate::download::{self, Limits};
use crate::error::{AgentError, AgentResult};
use crate::hub_client::{HubClient, Poll};
use crate::model::LoadedModel;
use crate::serve::Registry;
use crate::state::{ActiveModel, ActiveSet, Layout, TrustState};

pub struct Updater {
    /// The running configuration; `reload` swaps in the reloadable part of a new one.
    pub config: arc_swap::ArcSwap<AgentConfig>,
    pub layout: Layout,
    pub hub: HubClient,
    pub registry: Arc<Registry>,
    pub trust: Mutex<TrustState>,
    pub active: Mutex<ActiveSet>,
    pub last_error: Mutex<Option<String>>,
    /// Held while a bundle is applied: bundles pushed over MQTT and polled over HTTP may
    /// arrive together, and one model must not be installed twice at once.
    pub applying: Mutex<()>,
    /// Older assignments that arrived after a newer one for the version already served,
    /// ignored without an error (see `apply_one`).
    pub stale_assignments: AtomicU64,
}

/// Test-only fault point (see ARCHITECTURE.md): abort between staging and activation.
fn fault(point: &str) {
    if std::env::var("EDGEFLEET_AGENT_FAULT").is_ok_and(|f| f == point) {
        tracing::error!(point, "fault injection: aborting");
        std::process::abort();
    }
}

/// Loads one installed version from disk, re-checking the artifact's hash so a damaged file is
/// never served.
pub fn load_installed(layout: &Layout, name: &str, version: u64) -> AgentResult<LoadedModel> {
    let dir = layout.model_dir(name, version);
    let signed: Signed<ModelManifest> =
        Signed::from_bytes(&std::fs::read(dir.join("manifest.bin"))?)?;
    let manifest = signed.decode_unverified()?;
    let bytes = std::fs::read(dir.join("model.onnx"))?;
    if edgefleet_common::Digest::of(&bytes) != manifest.artifact.sha256 {
        return Err(AgentError::Model {
            name: name.into(),
            version,
            message: "artifact on disk does not match its manifest".into(),
        });
    }
    LoadedModel::load(manifest, &dir.join("model.onnx"))
}

impl Updater {
    /// Serves what `active.json` says, before the hub is reachable; falls back to the previous
    /// version of a model whose active version cannot be loaded.
    pub fn load_from_disk(&self, active: &mut ActiveSet) -> AgentResult<()> {
        let mut changed = false;
        for (name, a) in active.models.clone() {
            match load_installed(&self.layout, &name, a.version) {
                Ok(m) => {
                    tracing::info!(model = %name, version = a.version, "serving model from disk");
                    self.registry.swap_in(Arc::new(m));
                }
                Err(e) => {
                    tracing::error!(error = %e, model = %name, version = a.version, "cannot load the active version");
                    if let Some(prev) = a.previous
                        && let Ok(m) = load_installed(&self.layout, &name, prev)
                    {
                        tracing::warn!(model = %name, version = prev, "rolled back to the previous version");
                        self.registry.swap_in(Arc::new(m));
                        active.models.insert(
                            name.clone(),
                            ActiveModel {
                                version: prev,
                                previous: None,
                            },
                        );
                        changed = true;
                    }
                }
            }
        }
        if changed {
            self.layout.save_active(active)?;
        }
        Ok(())
    }

    /// Applies a new, validated configuration: the reloadable keys take effect at once (the
    /// next poll or download); keys that need a restart are reported and keep their value.
    pub fn reload(&self, mut new: AgentConfig) {
        let old = self.config.load_full();
        let mut restart = Vec::new();
        macro_rules! keep {
            ($($field:ident),*) => {$(
                if new.$field != old.$field {
                    restart.push(stringify!($field));
                    new.$field = old.$field.clone();
                }
            )*};
        }
        keep!(
            device_id,
            tags,
            hub_url,
            data_dir,
            root_key,
            enrollment_token,
            listen,
            log_format
        );
        if !restart.is_empty() {
            tracing::warn!(keys = ?restart, "these keys change only on restart; kept their running values");
        }
        tracing::info!(
            poll_interval_secs = new.poll_interval_secs,
            download_min_bytes_per_sec = new.download_min_bytes_per_sec,
            download_rate_window_secs = new.download_rate_window_secs,
            download_deadline_secs = new.download_deadline_secs,
            max_model_bytes = new.max_model_bytes,
            log_level = %new.log_level,
            "configuration reloaded"
        );
        self.config.store(std::sync::Arc::new(new));
    }

    pub async fn status(&self) -> DeviceStatus {
        let active = self.active.lock().await;
        DeviceStatus {
            active: active
                .models
                .iter()
                .map(|(n, a)| ModelRef {
                    name: n.clone(),
                    version: a.version,
                })
                .collect(),
            previous: active
                .models
                .iter()
                .filter_map(|(n, a)| {
                    a.previous.map(|v| ModelRef {
                        name: n.clone(),
                        version: v,
                    })
                })
                .collect(),
            last_error: self.last_error.lock().await.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Applies a bundle. `now` is fixed by the caller at the start of the update, so every
    /// expiry in it is judged against one time.
    pub async fn apply(&self, bundle: &AssignmentBundle, now: u64) -> AgentResult<()> {
        let _applying = self.applying.lock().await;
        if !bundle.rotations.is_empty() {
            let mut trust = self.trust.lock().await;
            let rotated = trust.root.rotate_all(&bundle.rotations)?;
            if rotated != trust.root {
                tracing::warn!(version = rotated.version, root = %rotated.root_key.short(), "root key rotated");
                trust.root = rotated;
                self.layout.save_trust(&trust)?;
            }
        }
        let mut first_error = None;
        for signed in &bundle.assignments {
            if let Err(e) = self.apply_one(signed, now).await {
                tracing::warn!(error = %e, "assignment not applied");
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A bundle the hub pushed (the retained MQTT message): applied like a polled one, then
    /// the outcome is reported over HTTP.
    pub async fn apply_pushed(&self, bundle: &AssignmentBundle, now: u64) -> AgentResult<()> {
        let result = self.apply(bundle, now).await;
        *self.last_error.lock().await = result.as_ref().err().map(|e| e.to_string());
        let status = self.status().await;
        if let Err(e) = self.hub.report(crate::now(), &status).await {
            tracing::debug!(error = %e, "status report failed");
        }
        result
    }

    async fn apply_one(&self, signed: &Signed<Assignment>, now: u64) -> AgentResult<()> {
        let root = self.trust.lock().await.root.clone();
        let a = signed.verify(&root, now)?;
        a.validate()?;
        if !a.target.matches(self.hub.device_id(), self.hub.tags()) {
            return Err(AgentError::Assignment(format!(
                "it targets {}, not this device",
                a.target
            )));
        }
        if now >= a.expires_at {
            return Err(AgentError::Assignment(format!(
                "assignment expired at {} (now {now})",
                a.expires_at
            )));
        }
        let last = self
            .trust
            .lock()
            .await
            .serials
            .get(&a.model)
            .copied()
            .unwrap_or(0);
        let current = self.active.lock().await.models.get(&a.model).copied();
        if a.serial < last {
            if current.map(|c| c.version) == Some(a.version) {
                // An older bundle arriving after a newer one for the version already served:
                // the HTTP long-poll and the retained MQTT bundle race, and a re-issued
                // assignment overtakes its predecessor. Nothing to do and nothing wrong with
                // the device, so it is not its error; a replay naming another version is.
                let stale = self.stale_assignments.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::debug!(model = %a.model, version = a.version, serial = a.serial, newest = last, stale, "older assignment for the version already served; ignored");
                return Ok(());
            }
            return Err(AgentError::Assignment(format!(
                "serial {} is older than {last}, already applied for {} (replayed assignment)",
                a.serial, a.model
            )));
        }
        if current.map(|c| c.version) == Some(a.version) {
            self.record_serial(&a).await?;
            return Ok(());
        }
        if a.serial == last {
            return Err(AgentError::Assignment(format!(
                "serial {} for {} was already used",
                a.serial, a.model
            )));
        }
        tracing::info!(model = %a.model, version = a.version, serial = a.serial, "applying assignment");

        let manifest_signed = self.hub.manifest(now, &a.model, a.version).await?;
        if manifest_signed.digest() != a.manifest_digest {
            return Err(AgentError::Assignment(format!(
                "the hub's manifest for {} v{} hashes to {}, the assignment binds {}",
                a.model,
                a.version,
                manifest_signed.digest(),
                a.manifest_digest
            )));
        }
        let m = manifest_signed.verify(&root, now)?;
        m.validate()?;
        if m.name != a.model || m.version != a.version {
            return Err(AgentError::Assignment(format!(
                "manifest is {} v{}, assignment wants {} v{}",
                m.name, m.version, a.model, a.version
            )));
        }

        let installed = load_installed(&self.layout, &m.name, m.version)
            .ok()
            .filter(|l| l.manifest == m);
        let loaded = match installed {
            Some(l) => l,
            None => {
                let url = self.hub.url(&format!(
                    "models/{}/versions/{}/artifact",
                    m.name, m.version
                ));
                let config = self.config.load();
                let limits = Limits {
                    min_bytes_per_sec: config.download_min_bytes_per_sec,
                    window: Duration::from_secs(config.download_rate_window_secs),
                    deadline: Duration::from_secs(config.download_deadline_secs),
                    max_bytes: config.max_model_bytes,
                };
                let file = download::fetch(
                    &self.hub,
                    now,
                    &url,
                    &self.layout.staging(),
                    &m.artifact,
                    &limits,
                )
                .await?;
                // Load and smoke-test from staging, before anything is installed.
                let staged = {
                    let (m2, f2) = (m.clone(), file.clone());
                    tokio::task::spawn_blocking(move || -> AgentResult<LoadedModel> {
                        let l = LoadedModel::load(m2, &f2)?;
                        l.smoke_test()?;
                        Ok(l)
                    })
                    .await
                    .map_err(|e| AgentError::Other(format!("loader panicked: {e}")))?
                };
                let staged = match staged {
                    Ok(s) => s,
                    Err(e) => {
                        // A bad artifact will stay bad: drop it so the next try re-downloads.
                        let _ = std::fs::remove_file(&file);
                        return Err(e);
                    }
                };
                fault("abort-before-install");
                self.layout.install(&manifest_signed, &m, &file)?;
                staged
            }
        };
        if !m.smoke_tests.is_empty() {
            loaded.smoke_test()?;
        }
        fault("abort-before-activate");
        {
            let mut active = self.active.lock().await;
            let previous = active.models.get(&m.name).map(|c| c.version);
            let mut next = active.clone();
            next.models.insert(
                m.name.clone(),
                ActiveModel {
                    version: m.version,
                    previous,
                },
            );
            self.layout.save_active(&next)?;
            self.registry.swap_in(Arc::new(loaded));
            *active = next;
            self.layout.collect_garbage(&active)?;
        }
        self.record_serial(&a).await?;
        tracing::info!(model = %m.name, version = m.version, "now serving");
        crate::lifecycle::status(&format!("serving {} v{}", m.name, m.version));
        Ok(())
    }

    async fn record_serial(&self, a: &Assignment) -> AgentResult<()> {
        let mut trust = self.trust.lock().await;
        if trust.serials.get(&a.model).copied().unwrap_or(0) < a.serial {
            trust.serials.insert(a.model.clone(), a.serial);
            self.layout.save_trust(&trust)?;
        }
        Ok(())
    }

    /// The loop: long-poll, apply, report; back off with jitter on failure.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let now = crate::now();
            let step = async {
                match self
                    .hub
                    .poll(now, self.config.load().poll_interval_secs)
                    .await
                {
                    Ok(Poll::Unchanged) => Ok(false),
                    Ok(Poll::Changed(bundle)) => self.apply(&bundle, now).await.map(|_| true),
                    Err(e) => Err(e),
                }
            };
            // Shutdown cancels a long-poll or an update mid-way: every step is crash-safe, so
            // stopping here is no worse than kill -9 and keeps the unit's stop timeout.
            let result = tokio::select! {
                r = step => r,
                _ = shutdown.changed() => return,
            };
            let failed = result.is_err();
            match &result {
                Ok(_) => {
                    backoff = Duration::from_secs(1);
                    *self.last_error.lock().await = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_secs = backoff.as_secs(), "update failed; still serving the current model");
                    *self.last_error.lock().await = Some(e.to_string());
                    crate::lifecycle::status(&format!("update failed, still serving: {e}"));
                    self.hub.reset_etag().await;
                }
            }
            if !matches!(result, Ok(false)) {
                let status = self.status().await;
                if let Err(e) = self.hub.report(crate::now(), &status).await {
                    tracing::debug!(error = %e, "status report failed");
                }
            }
            let sleep = if failed {
                let jitter = Duration::from_millis(
                    u64::from(jitter_ms()) % (backoff.as_millis() as u64 / 2 + 1),
                );
                let s = backoff + jitter;
                backoff = (backoff * 2).min(Duration::from_secs(300));
                s
            } else {
                Duration::ZERO
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}

fn jitter_ms() -> u32 {
    let mut b = [0u8; 4];
    // Without randomness the jitter is zero; that only weakens thundering-herd spreading.
    let _ = getrandom::fill(&mut b);
    u32::from_le_bytes(b)
}
