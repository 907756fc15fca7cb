//! Unassigning: a model the hub's bundle no longer names is served for
//! `removal_grace_secs` more (a hub mistake or a half-written desired state can be undone in
//! that time), then stopped and deleted from disk. A model assigned again within the grace
//! period simply stays. The pending removals and the newest signed set's serial live in
//! `removals.json`: a restart keeps the grace period's start and the replay floor.

use std::collections::BTreeMap;

use std::sync::atomic::Ordering;

use edgefleet_common::Permission;
use edgefleet_common::device::AssignmentBundle;

use super::Updater;
use crate::error::AgentResult;

/// Models no longer assigned, and since when (unix seconds).
pub type Unassigned = BTreeMap<String, u64>;

impl Updater {
    /// Notes which served models the hub's signed assigned set no longer names (the caller
    /// holds `applying`). Only that signed set counts: the bundle is an unsigned container
    /// anyone on the broker could forge, and a bundle without a valid set (a hub older than
    /// format 2, a refused or replayed set) changes nothing.
    pub(super) async fn note_unassigned(&self, bundle: &AssignmentBundle, now: u64) {
        let Some(signed) = &bundle.assigned else {
            return;
        };
        let root = self.trust.lock().await.root.clone();
        let set = match signed
            .verify_hub(&root, now, Permission::Assignments)
            .and_then(|s| s.validate_for(self.hub.device_id(), now).map(|()| s))
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "assigned set refused; no model is removed on it");
                return;
            }
        };
        let newest = self.assigned_serial.load(Ordering::Acquire);
        if set.serial < newest {
            tracing::debug!(serial = set.serial, newest, "older assigned set ignored");
            return;
        }
        self.assigned_serial.store(set.serial, Ordering::Release);
        let served: Vec<String> = self.active.lock().await.models.keys().cloned().collect();
        let mut unassigned = self.unassigned.lock().await;
        let before = unassigned.clone();
        unassigned.retain(|name, _| !set.models.contains(name) && served.contains(name));
        for name in served {
            if !set.models.contains(&name) && !unassigned.contains_key(&name) {
                tracing::warn!(model = %name, grace_secs = self.config.load().removal_grace_secs, "model no longer assigned; it stops after the grace period");
                unassigned.insert(name, now);
            }
        }
        if set.serial != newest || *unassigned != before {
            self.save_removals(&unassigned);
        }
    }

    /// Writes the pending removals and the set's serial (`removals.json`). A failed write is
    /// logged, not fatal: the worst a restart then does is start a grace period over.
    fn save_removals(&self, unassigned: &Unassigned) {
        let state = crate::state::RemovalState {
            assigned_serial: self.assigned_serial.load(Ordering::Acquire),
            unassigned: unassigned.clone(),
        };
        if let Err(e) = self.layout.save_removals(&state) {
            tracing::warn!(error = %e, "cannot save the pending removals");
        }
    }

    /// Stops serving and deletes the models whose grace period has ended at `now`; true when
    /// any was removed (the caller then reports the new status).
    pub async fn remove_unassigned(&self, now: u64) -> bool {
        let grace = self.config.load().removal_grace_secs;
        let due = |u: &Unassigned| -> Vec<String> {
            u.iter()
                .filter(|(_, since)| now >= since.saturating_add(grace))
                .map(|(name, _)| name.clone())
                .collect()
        };
        if due(&*self.unassigned.lock().await).is_empty() {
            return false;
        }
        let _applying = self.applying.lock().await;
        // Again under `applying`: a bundle applied meanwhile may have assigned it again.
        let due = due(&*self.unassigned.lock().await);
        let mut removed = false;
        for name in due {
            match self.remove_one(&name).await {
                Ok(()) => {
                    removed = true;
                    tracing::warn!(model = %name, "model unassigned: no longer served, deleted from disk");
                    crate::lifecycle::status(&format!("removed unassigned model {name}"));
                }
                Err(e) => {
                    tracing::warn!(model = %name, error = %e, "cannot remove an unassigned model; retried on the next round");
                }
            }
        }
        removed
    }

    async fn remove_one(&self, name: &str) -> AgentResult<()> {
        // `active.json` first: a crash after it leaves files nobody refers to, which the
        // next garbage collection removes.
        {
            let mut active = self.active.lock().await;
            let mut next = active.clone();
            next.models.remove(name);
            self.layout.save_active(&next)?;
            *active = next;
        }
        self.models.remove(name);
        self.layout.remove_model(name)?;
        {
            let mut unassigned = self.unassigned.lock().await;
            unassigned.remove(name);
            self.save_removals(&unassigned);
        }
        if let Ok(mut progress) = self.progress.lock() {
            progress.remove(name);
        }
        Ok(())
    }

    /// The models waiting out their grace period, and since when.
    pub async fn unassigned(&self) -> Unassigned {
        self.unassigned.lock().await.clone()
    }
}
