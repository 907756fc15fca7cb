//! The hub's telemetry-window instruction: while a rollout judges this device (a canary or
//! baseline of a baking wave), the hub asks it, in the signed bundle, to close telemetry
//! windows every N seconds. The uplink watches [`Instructed::watch`] and re-arms its window
//! clock; the device returns to its own window when a bundle comes without the instruction or
//! the instruction expires.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edgefleet_common::device::WindowInstruction;
use edgefleet_common::{Permission, Signed};

use super::Updater;
use crate::error::AgentResult;

/// The instruction in force, if any, and its watchers.
pub struct Instructed {
    tx: tokio::sync::watch::Sender<Option<Duration>>,
    current: std::sync::Mutex<Option<WindowInstruction>>,
    /// Newest instruction serial seen: an older one is a replay and is refused.
    newest_serial: AtomicU64,
}

impl Default for Instructed {
    fn default() -> Self {
        Self {
            tx: tokio::sync::watch::channel(None).0,
            current: Default::default(),
            newest_serial: AtomicU64::new(0),
        }
    }
}

impl Instructed {
    /// The window the hub asks for now (none: the device's own).
    pub fn watch(&self) -> tokio::sync::watch::Receiver<Option<Duration>> {
        self.tx.subscribe()
    }

    pub fn window_secs(&self) -> Option<u64> {
        self.tx.borrow().map(|d| d.as_secs())
    }

    fn set(&self, w: Option<WindowInstruction>) {
        let secs = w.as_ref().map(|w| Duration::from_secs(w.window_secs));
        if let Ok(mut current) = self.current.lock() {
            *current = w;
        }
        self.tx.send_if_modified(|old| {
            let changed = *old != secs;
            *old = secs;
            changed
        });
    }

    /// Drops an instruction that expired at `now`; true when it did.
    pub fn expire(&self, now: u64) -> bool {
        let expired = self
            .current
            .lock()
            .map(|c| c.as_ref().is_some_and(|w| now >= w.expires_at))
            .unwrap_or(false);
        if expired {
            tracing::info!("telemetry window instruction expired; back to the configured window");
            self.set(None);
        }
        expired
    }
}

impl Updater {
    /// Applies the bundle's window instruction (or its absence). A bad instruction is refused
    /// and the device keeps its current window; it never stops the bundle's assignments.
    pub(super) async fn apply_window(
        &self,
        signed: Option<&Signed<WindowInstruction>>,
        now: u64,
    ) -> AgentResult<()> {
        let Some(signed) = signed else {
            if self.window.window_secs().is_some() {
                tracing::info!("the hub ended its telemetry window instruction");
            }
            self.window.set(None);
            return Ok(());
        };
        let root = self.trust.lock().await.root.clone();
        let w = signed.verify_hub(&root, now, Permission::Assignments)?;
        w.validate_for(self.hub.device_id(), now)?;
        let newest = self.window.newest_serial.load(Ordering::Acquire);
        if w.serial < newest {
            // A stale retained message or a replay: the newer instruction stands.
            tracing::debug!(
                serial = w.serial,
                newest,
                "older window instruction ignored"
            );
            return Ok(());
        }
        self.window.newest_serial.store(w.serial, Ordering::Release);
        if self.window.window_secs() != Some(w.window_secs) {
            tracing::info!(window_secs = w.window_secs, reason = %w.reason, "the hub asks for short telemetry windows");
        }
        self.window.set(Some(w));
        Ok(())
    }
}
