//! The models this agent serves: the one home for what is in service.
//!
//! The set is one immutable map behind an `ArcSwap`: a request takes a snapshot at its start
//! and keeps it to the end, so a swap mid-request is invisible to it — every request sees the
//! old or the new model, never an error or a mix. Writers (the updater, at start and on each
//! activation) replace one entry at a time with [`ActiveModels::swap_in`].
//!
//! Each served entry pairs the tract model with its telemetry window ([`Served`]): the window
//! starts when the model is put in service, and when a model is swapped out its window is
//! closed and kept here ([`ActiveModels::take_retired`]) until telemetry next closes a window,
//! so the requests it saw are reported, not lost with the old model.
//!
//! This module depends on the model, the window and the feedback plan (a pure description of
//! the manifest) only: the OIP server, telemetry and the updater all read or write it, and none
//! of them is needed to hold it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::feedback::plan::Plan;
use crate::model::LoadedModel;
use crate::window::{Window, WindowRecorder};

/// A model in service: the tract model, the window its requests are recorded in, and how its
/// predictions are kept for feedback.
pub struct Served {
    pub model: LoadedModel,
    /// This model's current window: what its requests' inputs, outputs and latencies look like.
    pub window: WindowRecorder,
    /// Which output feedback scores and what a prediction keeps of it, decided once here so
    /// the inference path does not look it up.
    pub scoring: Arc<Plan>,
}

impl Served {
    /// Puts `model` in service: its window's columns come from its manifest, and the window
    /// starts now.
    pub fn new(model: LoadedModel) -> Self {
        let window = WindowRecorder::for_manifest(&model.manifest, crate::now());
        let scoring = Arc::new(Plan::for_manifest(&model.manifest));
        Self {
            model,
            window,
            scoring,
        }
    }
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Served({:?})", self.model)
    }
}

/// A closed window of a model that was swapped out.
#[derive(Debug)]
pub struct RetiredWindow {
    pub model: String,
    pub version: u64,
    pub window: Window,
}

/// The models being served, by name.
#[derive(Default)]
pub struct ActiveModels {
    models: ArcSwap<HashMap<String, Arc<Served>>>,
    /// Set once the models on disk are loaded: until then an empty map means "not yet", not
    /// "nothing assigned".
    ready: AtomicBool,
    /// Windows of models swapped out since telemetry last closed a window: their requests
    /// are reported with the next record, not lost with the old model.
    retired: Mutex<Vec<RetiredWindow>>,
}

impl ActiveModels {
    pub fn get(&self, name: &str) -> Option<Arc<Served>> {
        self.models.load().get(name).cloned()
    }

    /// The whole map as it is now; later swaps do not change it.
    pub fn snapshot(&self) -> Arc<HashMap<String, Arc<Served>>> {
        self.models.load_full()
    }

    /// Atomically replaces (or adds) one model. The replaced model's window is closed and
    /// kept for the next telemetry record (a request still running on it records into a
    /// window nobody reads: at most the requests in flight at the swap).
    pub fn swap_in(&self, served: Arc<Served>) {
        let name = &served.model.manifest.name;
        let previous = self.models.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.insert(name.clone(), served.clone());
            next
        });
        if let Some(old) = previous.get(name)
            && !Arc::ptr_eq(old, &served)
        {
            self.retire(old);
        }
    }

    /// Closes a model's window as it leaves service and keeps it for the next record.
    fn retire(&self, old: &Served) {
        if let Some(window) = old.window.close(crate::now())
            && (window.requests > 0 || window.errors > 0)
            && let Ok(mut retired) = self.retired.lock()
        {
            retired.push(RetiredWindow {
                model: old.model.manifest.name.clone(),
                version: old.model.manifest.version,
                window,
            });
        }
    }

    /// Stops serving `name` (no longer assigned); its window is kept for the next record,
    /// as at a swap. Returns whether it was served.
    pub fn remove(&self, name: &str) -> bool {
        let previous = self.models.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.remove(name);
            next
        });
        let Some(old) = previous.get(name) else {
            return false;
        };
        self.retire(old);
        true
    }

    /// The windows of models swapped out since the last call.
    pub fn take_retired(&self) -> Vec<RetiredWindow> {
        self.retired
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
