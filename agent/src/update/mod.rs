//! The update loop: fetch assignments → verify → download → verify → load → smoke-test →
//! swap → persist → report. Any failure keeps the current model serving and is retried with
//! backoff and jitter.
//!
//! One assignment is applied in four steps, each its own module:
//!
//! ```text
//! check     verify against the trust root, target, expiry; the serial policy (pure)
//! fetch     the manifest: bound by the assignment's digest, verified, the model named
//! stage     an installed copy, or download → load + smoke-test in staging → install
//! activate  active.json, swap in, collect garbage, record the serial
//! ```
//!
//! Contract: bundles are applied one at a time (`applying` is held for the whole bundle,
//! whether it was polled over HTTP or pushed over MQTT), so within [`Updater::apply`] the
//! trust state and the active set change only by the bundle being applied. Every step is
//! crash-safe: nothing is installed before its hash, size and smoke tests pass, and
//! `active.json` names a new version only once it is installed, so kill -9 at any point leaves
//! the old or the new model serving. A failure leaves the current model serving.

mod activate;
pub mod backoff;
pub mod check;
pub mod fetch;
pub mod instruction;
mod removal;
mod stage;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edgefleet_common::device::{
    AssignmentBundle, BUNDLE_FORMAT, DeviceStatus, InstallPhase, InstallStatus, ModelRef,
};
use edgefleet_common::{Assignment, Signed};
use tokio::sync::Mutex;

use crate::active::{ActiveModels, Served};
use crate::config::AgentConfig;
use crate::error::AgentResult;
use crate::hub_client::{HubClient, Poll};
use crate::state::{ActiveModel, ActiveSet, Layout, TrustState};
use check::Decision;

pub use backoff::Backoff;
pub use stage::load_installed;

pub struct Updater {
    /// The running configuration; `reload` swaps in the reloadable part of a new one.
    pub config: arc_swap::ArcSwap<AgentConfig>,
    pub layout: Layout,
    pub hub: HubClient,
    /// The models being served: activation swaps into it.
    pub models: Arc<ActiveModels>,
    pub trust: Mutex<TrustState>,
    pub active: Mutex<ActiveSet>,
    pub last_error: Mutex<Option<String>>,
    /// Held while a bundle is applied: bundles pushed over MQTT and polled over HTTP may
    /// arrive together, and one model must not be installed twice at once.
    pub applying: Mutex<()>,
    /// Older assignments that arrived after a newer one for the version already served,
    /// ignored without an error (see [`check::decide`]). Shared so `/metrics` can report it.
    pub stale_assignments: Arc<AtomicU64>,
    /// Where the latest assignment of each model stands, for the status report.
    pub progress: std::sync::Mutex<std::collections::BTreeMap<String, InstallStatus>>,
    /// The hub's telemetry-window instruction in force.
    pub window: instruction::Instructed,
    /// Served models the hub no longer assigns, waiting out their grace period.
    pub unassigned: Mutex<removal::Unassigned>,
    /// Serial of the newest signed assigned set applied: an older one is a replay.
    pub assigned_serial: AtomicU64,
    /// Where the hub's capture instructions go (none: this updater ignores them).
    pub capture: Option<Arc<crate::feedback::Capture>>,
}

/// Test-only fault point (see ARCHITECTURE.md): abort between staging and activation.
fn fault(point: &str) {
    if std::env::var("EDGEFLEET_AGENT_FAULT").is_ok_and(|f| f == point) {
        tracing::error!(point, "fault injection: aborting");
        std::process::abort();
    }
}

impl Updater {
    pub fn new(
        config: AgentConfig,
        layout: Layout,
        hub: HubClient,
        models: Arc<ActiveModels>,
        trust: TrustState,
        active: ActiveSet,
    ) -> Self {
        // Kept across restarts; unreadable, it starts empty (a grace period starts over).
        let removals = layout.load_removals().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "pending removals unreadable; starting without them");
            Default::default()
        });
        Self {
            config: arc_swap::ArcSwap::from_pointee(config),
            layout,
            hub,
            models,
            trust: Mutex::new(trust),
            active: Mutex::new(active),
            last_error: Mutex::new(None),
            applying: Mutex::new(()),
            stale_assignments: Default::default(),
            progress: Default::default(),
            window: Default::default(),
            unassigned: Mutex::new(removals.unassigned),
            assigned_serial: AtomicU64::new(removals.assigned_serial),
            capture: None,
        }
    }

    /// Hands the hub's sample-capture instructions to `capture` (the agent's feedback).
    pub fn with_capture(mut self, capture: Arc<crate::feedback::Capture>) -> Self {
        self.capture = Some(capture);
        self
    }

    /// Verifies the bundle's capture instructions (signed under the root's delegation for the
    /// model, for this device, unexpired) and puts the good ones in force; a refused one is
    /// logged and switches nothing on.
    async fn apply_capture(&self, bundle: &AssignmentBundle, now: u64) {
        let Some(capture) = &self.capture else {
            return;
        };
        if (1..3).contains(&bundle.format) {
            // An older format cannot carry capture instructions (the hub pushes the format of
            // the device's last status report): it says nothing about them.
            return;
        }
        let root = self.trust.lock().await.root.clone();
        let mut verified = Vec::new();
        for signed in &bundle.capture {
            match signed
                .verify(&root, now)
                .and_then(|c| c.validate_for(self.hub.device_id(), now).map(|()| c))
            {
                Ok(c) => verified.push(c),
                Err(error) => tracing::warn!(%error, "sample capture instruction refused"),
            }
        }
        capture.set(verified);
    }

    /// Serves what `active.json` says, before the hub is reachable; falls back to the previous
    /// version of a model whose active version cannot be loaded.
    pub fn load_from_disk(&self, active: &mut ActiveSet) -> AgentResult<()> {
        let mut changed = false;
        for (name, a) in active.models.clone() {
            match load_installed(&self.layout, &name, a.version) {
                Ok(m) => {
                    tracing::info!(model = %name, version = a.version, "serving model from disk");
                    self.models.swap_in(Arc::new(Served::new(m)));
                }
                Err(e) => {
                    tracing::error!(error = %e, model = %name, version = a.version, "cannot load the active version");
                    if let Some(prev) = a.previous
                        && let Ok(m) = load_installed(&self.layout, &name, prev)
                    {
                        tracing::warn!(model = %name, version = prev, "rolled back to the previous version");
                        self.models.swap_in(Arc::new(Served::new(m)));
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
            log_format,
            feedback_max_predictions,
            feedback_max_age_secs,
            feedback_max_bytes
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
        // Before `active` is held: `installs` reads it too (tokio's Mutex is not reentrant).
        let installs = self.installs().await;
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
            installs,
            bundle_format: BUNDLE_FORMAT,
            window_secs: Some(
                self.window
                    .window_secs()
                    .unwrap_or(self.config.load().telemetry_window_secs),
            ),
            time_zone: self.config.load().time_zone(),
        }
    }

    /// Each model's latest install, with models waiting out their removal grace marked so.
    async fn installs(&self) -> Vec<InstallStatus> {
        let unassigned = self.unassigned.lock().await.clone();
        let active = self.active.lock().await.clone();
        let mut out: std::collections::BTreeMap<String, InstallStatus> =
            self.progress.lock().map(|p| p.clone()).unwrap_or_default();
        for (name, since) in unassigned {
            if let Some(a) = active.models.get(&name) {
                out.insert(
                    name.clone(),
                    InstallStatus {
                        model: name,
                        version: a.version,
                        phase: InstallPhase::Removing,
                        reason: Some("no longer assigned".into()),
                        at: since,
                    },
                );
            }
        }
        out.into_values().collect()
    }

    /// Records where model `name` v`version` stands.
    fn set_progress(&self, name: &str, version: u64, phase: InstallPhase, reason: Option<String>) {
        if let Ok(mut p) = self.progress.lock() {
            p.insert(
                name.to_owned(),
                InstallStatus {
                    model: name.to_owned(),
                    version,
                    phase,
                    reason,
                    at: crate::now(),
                },
            );
        }
    }

    /// Tells the hub at once where an install stands, so a long download shows as
    /// downloading; bounded, and a failure only waits for the next report.
    async fn report_progress(&self) {
        let status = self.status().await;
        let report = self.hub.report(crate::now(), &status);
        match tokio::time::timeout(Duration::from_secs(5), report).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "status report failed"),
            Err(_) => tracing::debug!("status report timed out"),
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
        // The instruction only changes how telemetry windows close: a bad one is logged and
        // the device keeps its window; it never fails the update.
        if let Err(e) = self.apply_window(bundle.window.as_ref(), now).await {
            tracing::warn!(error = %e, "telemetry window instruction refused");
        }
        self.apply_capture(bundle, now).await;
        self.note_unassigned(bundle, now).await;
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

    /// Applies one assignment of the bundle being applied (the caller holds `applying`).
    async fn apply_one(&self, signed: &Signed<Assignment>, now: u64) -> AgentResult<()> {
        // One snapshot of the trust state: the root to verify with and the serials applied.
        // Only the bundle being applied changes it, and its caller holds `applying`.
        let trust = self.trust.lock().await.clone();
        let a = check::verify(
            signed,
            &trust.root,
            self.hub.device_id(),
            self.hub.tags(),
            now,
        )?;
        let last = trust.serials.get(&a.model).copied().unwrap_or(0);
        let current = self
            .active
            .lock()
            .await
            .models
            .get(&a.model)
            .map(|c| c.version);
        match check::decide(&a, last, current)? {
            Decision::Ignore => {
                let stale = self.stale_assignments.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::debug!(model = %a.model, version = a.version, serial = a.serial, newest = last, stale, "older assignment for the version already served; ignored");
                return Ok(());
            }
            Decision::RecordSerialOnly => {
                // The served version: whatever an earlier assignment left (a failed newer
                // version rolled back), this model is active now.
                self.set_progress(&a.model, a.version, InstallPhase::Active, None);
                return self.record_serial(&a).await;
            }
            Decision::Install => {}
        }
        tracing::info!(model = %a.model, version = a.version, serial = a.serial, "applying assignment");
        self.set_progress(&a.model, a.version, InstallPhase::Downloading, None);
        self.report_progress().await;
        let result = async {
            let manifest = fetch::manifest(&self.hub, &a, &trust.root, now).await?;
            let limits = stage::limits(&self.config.load());
            let loaded = stage::stage(&self.layout, &self.hub, &limits, &manifest, now).await?;
            self.set_progress(&a.model, a.version, InstallPhase::Installed, None);
            self.activate(&a, loaded).await
        }
        .await;
        match &result {
            Ok(()) => self.set_progress(&a.model, a.version, InstallPhase::Active, None),
            Err(e) => {
                self.set_progress(&a.model, a.version, e.install_phase(), Some(e.to_string()))
            }
        }
        result
    }

    /// The loop: long-poll, apply, report; back off with jitter on failure.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
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
            let expired = self.window.expire(crate::now());
            let removed = self.remove_unassigned(crate::now()).await;
            match &result {
                Ok(_) => {
                    backoff.reset();
                    *self.last_error.lock().await = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_secs = backoff.step().as_secs(), "update failed; still serving the current model");
                    *self.last_error.lock().await = Some(e.to_string());
                    crate::lifecycle::status(&format!("update failed, still serving: {e}"));
                    self.hub.reset_etag().await;
                }
            }
            if !matches!(result, Ok(false)) || expired || removed {
                let status = self.status().await;
                if let Err(e) = self.hub.report(crate::now(), &status).await {
                    tracing::debug!(error = %e, "status report failed");
                }
            }
            let sleep = if failed {
                backoff.next_wait(u64::from(jitter_ms()))
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
