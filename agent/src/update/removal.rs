//! Unassigning: a model the hub's bundle no longer names is served for
//! `removal_grace_secs` more (a hub mistake or a half-written desired state can be undone in
//! that time), then stopped and deleted from disk. A model assigned again within the grace
//! period simply stays.

use std::collections::BTreeMap;

use edgefleet_common::device::AssignmentBundle;

use super::Updater;
use crate::error::AgentResult;

/// Models no longer assigned, and since when (unix seconds).
pub type Unassigned = BTreeMap<String, u64>;

impl Updater {
    /// Notes which served models the bundle no longer assigns (the caller holds `applying`).
    /// Only a bundle that verified as a whole is a statement of what is assigned: an
    /// assignment that failed to verify still counts as naming its model.
    pub(super) async fn note_unassigned(&self, bundle: &AssignmentBundle, now: u64) {
        let named: Vec<String> = bundle
            .assignments
            .iter()
            .filter_map(|s| s.decode_unverified().ok().map(|a| a.model))
            .collect();
        let served: Vec<String> = self.active.lock().await.models.keys().cloned().collect();
        let mut unassigned = self.unassigned.lock().await;
        unassigned.retain(|name, _| !named.contains(name) && served.contains(name));
        for name in served {
            if !named.contains(&name) && !unassigned.contains_key(&name) {
                tracing::warn!(model = %name, grace_secs = self.config.load().removal_grace_secs, "model no longer assigned; it stops after the grace period");
                unassigned.insert(name, now);
            }
        }
    }

    /// Stops serving and deletes the models whose grace period has ended at `now`.
    pub async fn remove_unassigned(&self, now: u64) -> AgentResult<()> {
        let grace = self.config.load().removal_grace_secs;
        let due: Vec<String> = self
            .unassigned
            .lock()
            .await
            .iter()
            .filter(|(_, since)| now >= since.saturating_add(grace))
            .map(|(name, _)| name.clone())
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let _applying = self.applying.lock().await;
        for name in due {
            // `active.json` first: a crash after it leaves files nobody refers to.
            {
                let mut active = self.active.lock().await;
                let mut next = active.clone();
                next.models.remove(&name);
                self.layout.save_active(&next)?;
                *active = next;
            }
            self.models.remove(&name);
            self.layout.remove_model(&name)?;
            self.unassigned.lock().await.remove(&name);
            if let Ok(mut progress) = self.progress.lock() {
                progress.remove(&name);
            }
            tracing::warn!(model = %name, "model unassigned: no longer served, deleted from disk");
            crate::lifecycle::status(&format!("removed unassigned model {name}"));
        }
        Ok(())
    }

    /// The models waiting out their grace period, and since when.
    pub async fn unassigned(&self) -> Unassigned {
        self.unassigned.lock().await.clone()
    }
}
