//! Process lifecycle of both services: systemd notify (READY=1 once the service really serves,
//! STATUS= lines, WATCHDOG=1 at half the unit's `WatchdogSec`, STOPPING=1 on shutdown; no-ops
//! outside systemd), logging for journald/terminals/JSON, SIGHUP / config-file reload, and the
//! process-wide TLS crypto provider.
//!
//! This one source file is compiled into the agent's and the hub's libraries (the hub includes
//! it with `#[path]`, without depending on the agent crate): it is process plumbing, which
//! `common` — no I/O — cannot hold, and it must not exist twice.

use std::time::Duration;

/// Installs rustls' `ring` crypto provider as the process default, which the HTTP clients
/// (reqwest) and the MQTT clients' TLS use; the shipped binaries carry no other. Idempotent:
/// the first provider installed wins.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn send(states: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(error) = sd_notify::notify(states) {
        tracing::debug!(%error, "sd_notify failed");
    }
}

/// The service serves: agent — models on disk loaded (or none assigned) and the listener
/// bound; hub — store open and the listener bound.
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

/// Changes the log level at run time (SIGHUP reload).
pub type LogHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Logs to stdout: JSON when asked; under journald (`JOURNAL_STREAM` set) plain lines without
/// timestamps or colours, since journald adds both; colours only on a terminal otherwise.
/// `EDGEFLEET_LOG` (an `EnvFilter` directive) overrides the configured level.
pub fn init_logging(format: &str, level: &str) -> LogHandle {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, fmt, reload};
    let filter = EnvFilter::try_from_env("EDGEFLEET_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let (filter, handle) = reload::Layer::new(filter);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let output = match (format, journald) {
        ("json", _) => fmt::layer().json().boxed(),
        (_, true) => fmt::layer().without_time().with_ansi(false).boxed(),
        _ => fmt::layer().with_ansi(terminal).boxed(),
    };
    // A second init (tests start several services in one process) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init();
    handle
}

/// Applies a new level unless `EDGEFLEET_LOG` pins it.
pub fn set_log_level(handle: &LogHandle, level: &str) {
    if std::env::var_os("EDGEFLEET_LOG").is_some() {
        return;
    }
    if let Err(error) = handle.reload(tracing_subscriber::EnvFilter::new(level)) {
        tracing::warn!(%error, "cannot change the log level");
    }
}

/// Calls `reload` on SIGHUP, and when the config file's modification time changes (checked
/// every few seconds). `reload` re-reads and validates the file; a bad file is logged and the
/// running configuration kept.
pub fn watch_config(path: Option<std::path::PathBuf>, reload: impl Fn() + Send + 'static) {
    // Registered before returning: a SIGHUP right after start-up must not kill the process.
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; configuration reload disabled");
        return;
    };
    tokio::spawn(async move {
        let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut last = path.as_deref().and_then(mtime);
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    send(&[sd_notify::NotifyState::Reloading]);
                    reload();
                    send(&[sd_notify::NotifyState::Ready]);
                }
                _ = tick.tick() => {
                    let now = path.as_deref().and_then(mtime);
                    if now != last {
                        last = now;
                        tracing::info!("configuration file changed: reloading");
                        reload();
                    }
                }
            }
        }
    });
}
