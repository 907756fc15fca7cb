//! Step 4: the installed model goes into service.
//!
//! The order is what makes it crash-safe: `active.json` is written before the swap, so a crash
//! after it restarts serving the new version (installed, so whole); a crash before it restarts
//! on the old one. Garbage is collected only once the new set is durable, and the serial is
//! recorded last, so an assignment cut short by a crash is accepted again after the restart
//! rather than refused as already used.

use std::sync::Arc;

use edgefleet_common::Assignment;

use super::{Updater, fault};
use crate::active::Served;
use crate::error::AgentResult;
use crate::model::LoadedModel;
use crate::state::ActiveModel;

impl Updater {
    /// Serves `loaded` (installed, for assignment `a`) in place of the model's current version,
    /// which is kept on disk as the previous one for rollback.
    pub(super) async fn activate(&self, a: &Assignment, loaded: LoadedModel) -> AgentResult<()> {
        let (name, version) = (loaded.manifest.name.clone(), loaded.manifest.version);
        if !loaded.manifest.smoke_tests.is_empty() {
            loaded.smoke_test()?;
        }
        fault("abort-before-activate");
        {
            let mut active = self.active.lock().await;
            let previous = active.models.get(&name).map(|c| c.version);
            let mut next = active.clone();
            next.models
                .insert(name.clone(), ActiveModel { version, previous });
            self.layout.save_active(&next)?;
            self.models.swap_in(Arc::new(Served::new(loaded)));
            *active = next;
            self.layout.collect_garbage(&active)?;
        }
        self.record_serial(a).await?;
        tracing::info!(model = %name, version, "now serving");
        crate::lifecycle::status(&format!("serving {name} v{version}"));
        Ok(())
    }

    /// Records `a`'s serial as the model's newest, if it is newer: later assignments with a
    /// lower serial are replays.
    pub(super) async fn record_serial(&self, a: &Assignment) -> AgentResult<()> {
        let mut trust = self.trust.lock().await;
        if trust.serials.get(&a.model).copied().unwrap_or(0) < a.serial {
            trust.serials.insert(a.model.clone(), a.serial);
            self.layout.save_trust(&trust)?;
        }
        Ok(())
    }
}
