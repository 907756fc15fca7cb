//! Staged rollouts: a model version reaches a fleet in waves, each proven in the field against
//! the devices still on the old version before the next starts, and rolled back by itself
//! when a gate fails.
//!
//! - [`model`]: the spec, the record, the states, wave membership.
//! - [`gates`]: canary-against-baseline judgement.
//! - [`step`]: the state machine the rollout driver (`drivers::rollout`) advances.
//!
//! Rules:
//! - the rollout moves a device by setting that device's own desired version (a device target
//!   wins over tags); the assignment that reaches the device is the only channel;
//! - what a device had before is recorded *before* it is moved, so a rollback (and a hub
//!   restart at any point) restores exactly that; a rollback is a new assignment with a new
//!   serial, never a replay;
//! - two active rollouts of one model never share a device: an overlapping one is refused
//!   unless it names the one it supersedes;
//! - every transition is written (with its cause: an operator, a gate and its values, a
//!   timer) to the rollout's audit log before anything acts on it.

pub mod gates;
pub mod model;
mod step;

use edgefleet_common::device::InstallPhase;
use edgefleet_common::name;
use serde::Serialize;

pub use model::{MaintenanceWindow, Policy, Rollout, RolloutSpec, Selector, State, WaveSize};

use crate::desired::Desired;
use crate::devices::Devices;
use crate::error::{HubError, HubResult};
use crate::registry::Registry;
use crate::store::{DeviceRecord, Store};
use crate::telemetry::{Liveness, Telemetry};

#[derive(Clone)]
pub struct Rollouts {
    store: Store,
    registry: Registry,
    devices: Devices,
    desired: Desired,
    telemetry: Telemetry,
    /// One step or operator action at a time: they read, decide and write the same records.
    lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// One line of a rollout's audit log.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AuditEntry {
    pub at: u64,
    pub from: State,
    pub to: State,
    pub wave: usize,
    /// `operator:<action>`, `gate`, `timer`, `created`, `superseded`.
    pub cause: String,
    pub detail: String,
    #[serde(default)]
    pub verdicts: Vec<gates::GateVerdict>,
}

/// Where one device of a rollout is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum DeviceProgress {
    /// Moved, but the device has not reported on this version yet.
    Pending,
    Downloading,
    /// Installed on disk, not serving yet.
    Installed,
    Active,
    Failed(String),
}

/// A wave's devices, as the API shows them.
#[derive(Debug, Clone, Serialize)]
pub struct WaveProgress {
    pub index: usize,
    pub size: WaveSize,
    /// Devices the wave reaches, counting the earlier waves'.
    pub reach: usize,
    /// Devices this wave moved.
    pub targeted: usize,
    /// Moved devices that have not reported on the version yet.
    pub pending: usize,
    pub downloading: usize,
    pub installed: usize,
    pub active: usize,
    pub failed: Vec<(String, String)>,
    /// Devices the current wave reaches that are not moved yet: waiting for their maintenance
    /// window (or for the next step).
    pub waiting: usize,
}

/// A rollout with its progress.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutView {
    #[serde(flatten)]
    pub rollout: Rollout,
    pub selected: usize,
    pub progress: Vec<WaveProgress>,
}

/// Where a device is with `version` of `model`: from the agent's install report where it
/// gives one (agents with bundle format 2), else from what older agents report.
pub fn device_progress(
    d: &DeviceRecord,
    liveness: Option<&Liveness>,
    model: &str,
    version: u64,
) -> DeviceProgress {
    let serves = |active: &[edgefleet_common::device::ModelRef]| {
        active
            .iter()
            .any(|m| m.name == model && m.version == version)
    };
    let status = d.status.as_ref();
    if status.is_some_and(|s| serves(&s.active)) || liveness.is_some_and(|l| serves(&l.active)) {
        return DeviceProgress::Active;
    }
    let install = status.and_then(|s| {
        s.installs
            .iter()
            .find(|i| i.model == model && i.version == version)
    });
    if let Some(i) = install {
        let reason = || i.reason.clone().unwrap_or_else(|| "no reason given".into());
        return match i.phase {
            InstallPhase::Downloading => DeviceProgress::Downloading,
            InstallPhase::Installed => DeviceProgress::Installed,
            // Reported active but not in `active`: the newer report wins; not failed.
            InstallPhase::Active | InstallPhase::Removing => DeviceProgress::Installed,
            InstallPhase::SmokeTestFailed => {
                DeviceProgress::Failed(format!("smoke test failed: {}", reason()))
            }
            InstallPhase::Failed => DeviceProgress::Failed(reason()),
        };
    }
    match status.and_then(|s| s.last_error.as_ref()) {
        // The agent names the model in its errors; another model's failure is not this one's.
        Some(e) if e.contains(model) => DeviceProgress::Failed(e.clone()),
        _ if status.is_some_and(|s| s.bundle_format >= 2) => DeviceProgress::Pending,
        _ => DeviceProgress::Downloading,
    }
}

impl Rollouts {
    pub fn new(
        store: Store,
        registry: Registry,
        devices: Devices,
        desired: Desired,
        telemetry: Telemetry,
    ) -> Self {
        Self {
            store,
            registry,
            devices,
            desired,
            telemetry,
            lock: Default::default(),
        }
    }

    fn save(&self, r: &Rollout) -> HubResult<()> {
        let json = serde_json::to_vec(r).map_err(|e| HubError::Internal(e.to_string()))?;
        self.store.put_rollout(r.id, &json)
    }

    fn audit_entry(&self, id: u64, entry: &AuditEntry) -> HubResult<()> {
        tracing::info!(rollout = id, from = ?entry.from, to = ?entry.to, wave = entry.wave, cause = %entry.cause, detail = %entry.detail, "rollout transition");
        let json = serde_json::to_vec(entry).map_err(|e| HubError::Internal(e.to_string()))?;
        self.store.append_audit(id, &json)
    }

    /// Moves `r` to `to`, audited, and saves it (the audit line first: nothing acts on a
    /// transition the log does not show).
    fn transition(
        &self,
        r: &mut Rollout,
        to: State,
        cause: &str,
        detail: String,
        verdicts: Vec<gates::GateVerdict>,
    ) -> HubResult<()> {
        let now = crate::now();
        self.audit_entry(
            r.id,
            &AuditEntry {
                at: now,
                from: r.state,
                to,
                wave: r.wave,
                cause: cause.into(),
                detail: detail.clone(),
                verdicts,
            },
        )?;
        if matches!(
            to,
            State::Paused | State::Failed | State::RollingBack | State::Aborted
        ) {
            r.reason = Some(detail);
        }
        r.state = to;
        r.updated_at = now;
        self.save(r)
    }

    pub fn get(&self, id: u64) -> HubResult<Rollout> {
        let bytes = self
            .store
            .rollout(id)?
            .ok_or_else(|| HubError::NotFound(format!("no rollout {id}")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| HubError::Internal(format!("stored rollout {id}: {e}")))
    }

    pub fn list(&self) -> HubResult<Vec<Rollout>> {
        self.store
            .rollouts()?
            .iter()
            .map(|b| {
                serde_json::from_slice(b)
                    .map_err(|e| HubError::Internal(format!("stored rollout: {e}")))
            })
            .collect()
    }

    pub fn audit(&self, id: u64) -> HubResult<Vec<AuditEntry>> {
        self.get(id)?;
        self.store
            .audit(id)?
            .iter()
            .map(|b| {
                serde_json::from_slice(b).map_err(|e| HubError::Internal(format!("audit: {e}")))
            })
            .collect()
    }

    /// Approved devices the selector picks.
    fn selected(&self, selector: &Selector) -> HubResult<Vec<DeviceRecord>> {
        Ok(self
            .devices
            .list()?
            .into_iter()
            .filter(|d| d.approved && selector.matches(d))
            .collect())
    }

    /// Creates a rollout; the driver starts it on its next step.
    pub async fn create(&self, spec: RolloutSpec) -> HubResult<Rollout> {
        let problems = spec.problems();
        if !problems.is_empty() {
            return Err(HubError::Invalid(format!(
                "invalid rollout: {}",
                problems.join("; ")
            )));
        }
        if self.registry.record(&spec.model, spec.version)?.is_none() {
            return Err(HubError::NotFound(format!(
                "model {} has no version {}; push it first",
                spec.model, spec.version
            )));
        }
        let _guard = self.lock.lock().await;
        let superseded = self.check_overlaps(&spec)?;
        let now = crate::now();
        let mut r = Rollout {
            id: self.store.next_rollout_id()?,
            spec,
            state: State::Pending,
            wave: 0,
            waves: vec![],
            moved: Default::default(),
            tags_before: Default::default(),
            reason: None,
            created_at: now,
            updated_at: now,
        };
        if let Some(mut old) = superseded {
            self.transition(
                &mut old,
                State::Aborted,
                "superseded",
                format!("superseded by rollout {}", r.id),
                vec![],
            )?;
            self.leave_cohort(&old)?;
        }
        self.save(&r)?;
        let detail = format!(
            "{} v{} to {:?} in {} waves",
            r.spec.model,
            r.spec.version,
            r.spec.selector,
            r.spec.waves.len()
        );
        self.transition(&mut r, State::Pending, "created", detail, vec![])?;
        self.store.flush().await?;
        Ok(r)
    }

    /// The active rollout of the same model whose devices this one could share: refused,
    /// unless the spec supersedes it (then returned, to be aborted).
    fn check_overlaps(&self, spec: &RolloutSpec) -> HubResult<Option<Rollout>> {
        let mut superseded = None;
        let devices = self.devices.list()?;
        for r in self.list()? {
            if r.spec.model != spec.model || !r.state.is_active() {
                continue;
            }
            // By name, or by a device that matches both now (two tag lists with no tag in
            // common still share a device that carries one of each).
            let shared = devices
                .iter()
                .find(|d| r.spec.selector.matches(d) && spec.selector.matches(d));
            if !r.spec.selector.overlaps(&spec.selector) && shared.is_none() {
                continue;
            }
            if spec.supersedes == Some(r.id) {
                superseded = Some(r);
                continue;
            }
            let example =
                shared.map_or(String::new(), |d| format!(" (device {} is in both)", d.id));
            return Err(HubError::Conflict(format!(
                "rollout {} ({} v{} to {:?}, {}) may move the same devices{example}; wait for it, abort it, or create this one with \"supersedes\": {}",
                r.id,
                r.spec.model,
                r.spec.version,
                r.spec.selector,
                r.state.name(),
                r.id
            )));
        }
        if let Some(id) = spec.supersedes
            && superseded.is_none()
        {
            return Err(HubError::Invalid(format!(
                "supersedes: rollout {id} is not an active rollout of {} that overlaps this one",
                spec.model
            )));
        }
        Ok(superseded)
    }

    /// The telemetry windows the rollouts ask of devices now (device, order).
    pub fn windows(&self) -> HubResult<Vec<(String, crate::store::WindowOrder)>> {
        self.store.window_orders()
    }

    /// A rollout with its per-wave progress.
    pub fn view(&self, r: Rollout) -> HubResult<RolloutView> {
        let selected = self.selected(&r.spec.selector)?;
        let waiting = if matches!(r.state, State::Running | State::Baking) {
            step::unmoved(&r, &self.candidates(&r)?).len()
        } else {
            0
        };
        let mut progress = Vec::new();
        for (index, size) in r.spec.waves.iter().enumerate() {
            let mut p = WaveProgress {
                index,
                size: *size,
                reach: size.reach(selected.len()),
                targeted: 0,
                pending: 0,
                downloading: 0,
                installed: 0,
                active: 0,
                failed: vec![],
                waiting: if index == r.wave { waiting } else { 0 },
            };
            for (id, _) in r.moved.iter().filter(|(_, m)| m.wave == index) {
                p.targeted += 1;
                let Some(d) = self.devices.get(id)? else {
                    continue;
                };
                let live = self.telemetry.store().liveness(id)?;
                match device_progress(&d, live.as_ref(), &r.spec.model, r.spec.version) {
                    DeviceProgress::Active => p.active += 1,
                    DeviceProgress::Pending => p.pending += 1,
                    DeviceProgress::Downloading => p.downloading += 1,
                    DeviceProgress::Installed => p.installed += 1,
                    DeviceProgress::Failed(e) => p.failed.push((id.clone(), e)),
                }
            }
            progress.push(p);
        }
        Ok(RolloutView {
            rollout: r,
            selected: selected.len(),
            progress,
        })
    }

    /// An operator action: `pause`, `resume`, `abort` or `rollback`.
    pub async fn act(&self, id: u64, action: &str) -> HubResult<Rollout> {
        name::validate(action)?;
        let _guard = self.lock.lock().await;
        let mut r = self.get(id)?;
        let cause = format!("operator:{action}");
        let refuse = |r: &Rollout| {
            Err(HubError::Conflict(format!(
                "rollout {id} is {}: it cannot {action}",
                r.state.name()
            )))
        };
        match action {
            "pause" if matches!(r.state, State::Pending | State::Running | State::Baking) => {
                self.transition(
                    &mut r,
                    State::Paused,
                    &cause,
                    "paused by an operator".into(),
                    vec![],
                )?;
            }
            "resume" if r.state == State::Paused => {
                // The current wave installs and bakes again from now.
                if let Some(w) = r.waves.get_mut(r.wave) {
                    w.baking_since = None;
                    w.started_at = crate::now();
                    w.outcome = None;
                    w.extended = false;
                }
                let to = if r.waves.is_empty() {
                    State::Pending
                } else {
                    State::Running
                };
                r.reason = None;
                self.transition(&mut r, to, &cause, "resumed by an operator".into(), vec![])?;
            }
            "abort" if r.state.is_active() => {
                self.transition(
                    &mut r,
                    State::Aborted,
                    &cause,
                    "aborted by an operator; devices keep what they have".into(),
                    vec![],
                )?;
                self.leave_cohort(&r)?;
            }
            "rollback" if r.state != State::RolledBack && r.state != State::RollingBack => {
                self.check_rollback(&r)?;
                self.roll_back(&mut r, &cause, "rolled back by an operator".into(), vec![])
                    .await?;
            }
            "pause" | "resume" | "abort" | "rollback" => return refuse(&r),
            _ => {
                return Err(HubError::Invalid(format!(
                    "unknown action {action:?}: pause, resume, abort or rollback"
                )));
            }
        }
        self.store.flush().await?;
        Ok(r)
    }

    /// Takes the rollout's devices out of its telemetry cohort.
    fn leave_cohort(&self, r: &Rollout) -> HubResult<()> {
        let cohort = r.cohort();
        for d in self.selected(&r.spec.selector)? {
            let store = self.telemetry.store();
            if store.cohort(&d.id, &r.spec.model)?.as_deref() == Some(cohort.as_str()) {
                store.set_cohort(&d.id, &r.spec.model, None)?;
            }
        }
        Ok(())
    }

    /// Gives every moved device its previous version back (a new assignment each).
    async fn roll_back(
        &self,
        r: &mut Rollout,
        cause: &str,
        detail: String,
        verdicts: Vec<gates::GateVerdict>,
    ) -> HubResult<()> {
        self.transition(r, State::RollingBack, cause, detail, verdicts)?;
        self.restore_previous(r).await?;
        self.leave_cohort(r)
    }

    /// Each device's own target version of `model` (device targets only, not tags).
    fn own_targets(&self, model: &str) -> HubResult<std::collections::HashMap<String, u64>> {
        self.targets(model, |t| match t {
            edgefleet_common::Target::Device(id) => Some(id.clone()),
            edgefleet_common::Target::Tag(_) => None,
        })
    }

    /// The target versions of `model` whose target `key` picks, by that key.
    fn targets(
        &self,
        model: &str,
        key: impl Fn(&edgefleet_common::Target) -> Option<String>,
    ) -> HubResult<std::collections::HashMap<String, u64>> {
        let index = self.desired.index()?;
        Ok(index
            .records()
            .filter(|d| d.model == model)
            .filter_map(|d| Some((key(&d.target)?, d.version)))
            .collect())
    }

    /// Sets each moved device's desired version back to what it had, and each tag a
    /// succeeded rollout handed its version to (idempotent; commits only what changed).
    async fn restore_previous(&self, r: &Rollout) -> HubResult<()> {
        let own = self.own_targets(&r.spec.model)?;
        let mut wrote = false;
        for (id, m) in &r.moved {
            if own.get(id).copied() != m.previous {
                self.desired.set_for_device(id, &r.spec.model, m.previous)?;
                wrote = true;
            }
        }
        let tags = self.targets(&r.spec.model, |t| match t {
            edgefleet_common::Target::Tag(tag) => Some(tag.clone()),
            edgefleet_common::Target::Device(_) => None,
        })?;
        for (tag, before) in &r.tags_before {
            if tags.get(tag).copied() != *before {
                self.desired.set_for_tag(tag, &r.spec.model, *before)?;
                wrote = true;
            }
        }
        if wrote {
            self.desired.commit().await?;
        }
        Ok(())
    }

    /// A rollout that ended (succeeded, failed, aborted) may be rolled back only while no
    /// later rollout of the model has moved any of its devices since: that one's rollback
    /// comes first, or the two would fight over the devices.
    fn check_rollback(&self, r: &Rollout) -> HubResult<()> {
        if r.state.is_active() {
            return Ok(());
        }
        for later in self.list()? {
            if later.id <= r.id
                || later.spec.model != r.spec.model
                || later.state == State::RolledBack
            {
                continue;
            }
            if let Some(id) = later.moved.keys().find(|id| r.moved.contains_key(*id)) {
                return Err(HubError::Conflict(format!(
                    "rollout {} ({} v{}, {}) has moved device {id} since; roll that one back first",
                    later.id,
                    later.spec.model,
                    later.spec.version,
                    later.state.name()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
