//! systemd integration: READY=1 once the hub is listening, STATUS= lines, WATCHDOG=1 at half
//! the unit's `WatchdogSec`, STOPPING=1 on shutdown. Every call is a no-op outside systemd
//! (no `NOTIFY_SOCKET`).

use std::time::Duration;

fn send(states: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(error) = sd_notify::notify(states) {
        tracing::debug!(%error, "sd_notify failed");
    }
}

/// Store open and listener bound.
pub fn ready(status: &str) {
    send(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

pub fn status(status: &str) {
    send(&[sd_notify::NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping"),
    ]);
}

/// Pings the watchdog at half its period from the runtime, so a wedged runtime gets restarted.
pub fn spawn_watchdog() {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (period / 2).max(Duration::from_millis(100));
    tracing::info!(
        every_ms = every.as_millis() as u64,
        "systemd watchdog enabled"
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            send(&[sd_notify::NotifyState::Watchdog]);
        }
    });
}
