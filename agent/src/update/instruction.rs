//! The hub's telemetry-window instruction: while a rollout judges this device (a canary or
//! baseline of a baking wave), the hub asks it, in the signed bundle, to close telemetry
//! windows every N seconds. The uplink watches [`Instructed::watch`] and re-arms its window
//! clock; the device returns to its own window when a bundle comes without the instruction or
//! the instruction expires.
//!
//! The rule itself is pure — [`verify`], then [`InForce::offer`] or [`InForce::end`], and
//! [`InForce::expire`] — so the simulator follows the same one.

use std::time::Duration;

use edgefleet_common::device::WindowInstruction;
use edgefleet_common::{Permission, Signed, TrustRoot};

use super::Updater;
use crate::error::AgentResult;

/// Checks a bundle's signed instruction: signed under `root` with the assignments permission,
/// for this device, not expired at `now`. A refused one changes nothing.
pub fn verify(
    signed: &Signed<WindowInstruction>,
    root: &TrustRoot,
    device_id: &str,
    now: u64,
) -> AgentResult<WindowInstruction> {
    let w = signed.verify_hub(root, now, Permission::Assignments)?;
    w.validate_for(device_id, now)?;
    Ok(w)
}

/// The instruction in force, if any, and the newest serial seen. The newest serial outlives
/// the instruction (its end or expiry), so a replayed older instruction stays refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InForce {
    current: Option<WindowInstruction>,
    newest_serial: u64,
}

/// What became of a verified instruction offered to [`InForce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    /// In force now; `changed` when its window differs from the one before.
    Accepted { changed: bool },
    /// Older than the newest seen (a stale retained message or a replay): the newer one stands.
    Refused { newest: u64 },
}

impl InForce {
    pub fn current(&self) -> Option<&WindowInstruction> {
        self.current.as_ref()
    }

    /// The window the hub asks for now (none: the device's own).
    pub fn window_secs(&self) -> Option<u64> {
        self.current.as_ref().map(|w| w.window_secs)
    }

    /// A bundle's instruction, verified with [`verify`]: in force unless older than the newest
    /// seen (the same serial again is accepted).
    pub fn offer(&mut self, w: WindowInstruction) -> Acceptance {
        if w.serial < self.newest_serial {
            return Acceptance::Refused {
                newest: self.newest_serial,
            };
        }
        self.newest_serial = w.serial;
        let changed = self.window_secs() != Some(w.window_secs);
        self.current = Some(w);
        Acceptance::Accepted { changed }
    }

    /// A bundle without an instruction: the device's own window again. True when one was in
    /// force.
    pub fn end(&mut self) -> bool {
        self.current.take().is_some()
    }

    /// Drops an instruction that expired at `now`; true when it did.
    pub fn expire(&mut self, now: u64) -> bool {
        let expired = self.current.as_ref().is_some_and(|w| now >= w.expires_at);
        if expired {
            self.current = None;
        }
        expired
    }
}

/// [`InForce`] shared by the update loop, which changes it, and the uplink, which watches it.
pub struct Instructed {
    tx: tokio::sync::watch::Sender<Option<Duration>>,
    in_force: std::sync::Mutex<InForce>,
}

impl Default for Instructed {
    fn default() -> Self {
        Self {
            tx: tokio::sync::watch::channel(None).0,
            in_force: Default::default(),
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

    /// Changes what is in force with `f` and tells the watchers the window that results.
    fn change<T>(&self, f: impl FnOnce(&mut InForce) -> T) -> T {
        let mut in_force = self
            .in_force
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let out = f(&mut in_force);
        let secs = in_force.window_secs().map(Duration::from_secs);
        self.tx.send_if_modified(|old| {
            let changed = *old != secs;
            *old = secs;
            changed
        });
        out
    }

    /// Drops an instruction that expired at `now`; true when it did.
    pub fn expire(&self, now: u64) -> bool {
        let expired = self.change(|w| w.expire(now));
        if expired {
            tracing::info!("telemetry window instruction expired; back to the configured window");
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
            if self.window.change(InForce::end) {
                tracing::info!("the hub ended its telemetry window instruction");
            }
            return Ok(());
        };
        let root = self.trust.lock().await.root.clone();
        let w = verify(signed, &root, self.hub.device_id(), now)?;
        let (serial, window_secs, reason) = (w.serial, w.window_secs, w.reason.clone());
        match self.window.change(|in_force| in_force.offer(w)) {
            Acceptance::Accepted { changed: true } => {
                tracing::info!(window_secs, %reason, "the hub asks for short telemetry windows");
            }
            Acceptance::Accepted { changed: false } => {}
            Acceptance::Refused { newest } => {
                tracing::debug!(serial, newest, "older window instruction ignored");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instruction(serial: u64, window_secs: u64, expires_at: u64) -> WindowInstruction {
        WindowInstruction {
            device: "shop-1".into(),
            window_secs,
            reason: "rollout demand v2".into(),
            serial,
            issued_at: 100,
            expires_at,
        }
    }

    #[test]
    fn an_older_serial_is_refused_even_after_the_instruction_ended() {
        let mut w = InForce::default();
        assert_eq!(
            w.offer(instruction(5, 10, 1_000)),
            Acceptance::Accepted { changed: true }
        );
        assert_eq!(
            w.offer(instruction(5, 10, 1_000)),
            Acceptance::Accepted { changed: false },
            "the same instruction again"
        );
        assert_eq!(
            w.offer(instruction(4, 30, 1_000)),
            Acceptance::Refused { newest: 5 }
        );
        assert_eq!(w.window_secs(), Some(10), "the newer one stands");
        assert!(w.end());
        assert!(!w.end(), "nothing left to end");
        assert_eq!(
            w.offer(instruction(4, 30, 1_000)),
            Acceptance::Refused { newest: 5 },
            "a replay after the end"
        );
        assert_eq!(w.window_secs(), None);
        assert_eq!(
            w.offer(instruction(6, 30, 1_000)),
            Acceptance::Accepted { changed: true }
        );
    }

    #[test]
    fn an_instruction_expires_and_its_serial_stays() {
        let mut w = InForce::default();
        w.offer(instruction(3, 10, 1_000));
        assert!(!w.expire(999));
        assert!(w.expire(1_000));
        assert_eq!(w.current(), None);
        assert_eq!(
            w.offer(instruction(2, 10, 5_000)),
            Acceptance::Refused { newest: 3 }
        );
    }
}
