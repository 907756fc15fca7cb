//! The Edgefleet hub: model registry, device enrollment and desired state, over HTTP.
//!
//! `main` parses flags and loads the configuration, then calls [`run`] with a bound listener,
//! so tests start a real hub on port 0.
//!
//! Architecture invariant: the hub never depends on the agent crate.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod config;
pub mod error;
pub mod keyfile;
#[path = "../../agent/src/lifecycle.rs"]
pub mod lifecycle;
pub mod mqtt;
pub mod reference;
pub mod store;
pub mod telemetry;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use edgefleet_common::Digest;

pub use config::{HubConfig, Loaded};

/// Installs rustls' `ring` crypto provider as the process default, which the admin CLI's
/// HTTP client and the MQTT client's TLS (an external `mqtts://` broker) both use. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Name of the admin token file in the data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Reads the admin token, creating it (0600) on first start. Returns the token and whether it
/// was just created (the caller prints it once).
pub fn admin_token(data_dir: &Path) -> anyhow::Result<(String, bool)> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if path.exists() {
        let t = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return Ok((t.trim().to_owned(), false));
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let token = format!("efa_{}", hex::encode(bytes));
    keyfile::write_atomic(&path, format!("{token}\n").as_bytes(), 0o600, false)?;
    Ok((token, true))
}

/// Runs the hub until `shutdown` resolves. The listener is already bound (port 0 in tests).
pub async fn run(
    loaded: Loaded,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (_keep, reloads) = tokio::sync::mpsc::channel(1);
    run_reloadable(loaded, listener, shutdown, reloads).await
}

/// [`run`], also swapping in each validated configuration received on `reloads` (SIGHUP):
/// keys, delegation, rotations, enrollment token and TTLs change at once; `data_dir` and
/// `listen` only on restart.
pub async fn run_reloadable(
    loaded: Loaded,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut reloads: tokio::sync::mpsc::Receiver<Loaded>,
) -> anyhow::Result<()> {
    let data_dir = loaded.config.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let store = store::Store::open(&data_dir).context("cannot open the hub's store")?;
    let (token, created) = admin_token(&data_dir)?;
    if created {
        // Printed once, on the first start; afterwards it is only in the 0600 file.
        eprintln!(
            "edgefleet-hub: admin token (also in {}): {token}",
            data_dir.join(ADMIN_TOKEN_FILE).display()
        );
    }
    let (changes, _) = tokio::sync::watch::channel(0u64);
    let state = Arc::new(api::AppState {
        store: store.clone(),
        loaded: arc_swap::ArcSwap::from_pointee(loaded),
        admin_token_hash: Digest::of(token.as_bytes()),
        changes,
        stopping: Default::default(),
        telemetry: telemetry::TelemetryStore::open(store.db())?,
        mqtt: Default::default(),
        issuing: Default::default(),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if state.loaded.load().config.mqtt_enabled {
        let mqtt = mqtt::start(state.clone(), state.telemetry.clone(), stop_rx.clone()).await?;
        let _ = state.mqtt.set(mqtt);
    }
    tokio::spawn(prune_telemetry(state.clone(), stop_rx));
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %data_dir.display(), "hub listening");
    let reload_state = state.clone();
    tokio::spawn(async move {
        while let Some(mut new) = reloads.recv().await {
            let old = reload_state.loaded.load_full();
            if new.config.data_dir != old.config.data_dir || new.config.listen != old.config.listen
            {
                tracing::warn!(
                    "data_dir and listen change only on restart; kept their running values"
                );
                new.config.data_dir = old.config.data_dir.clone();
                new.config.listen = old.config.listen;
            }
            tracing::info!(root = %new.trust.root_key.short(), root_version = new.trust.version, "configuration reloaded");
            reload_state.loaded.store(Arc::new(new));
            reload_state.changed();
        }
    });
    lifecycle::ready(&format!("listening on {addr}"));
    lifecycle::spawn_watchdog();
    let on_stop = state.clone();
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            lifecycle::stopping();
            on_stop.begin_shutdown();
            let _ = stop_tx.send(true);
        })
        .await?;
    store.flush().await?;
    tracing::info!("hub stopped");
    Ok(())
}

/// Drops telemetry older than the retention, hourly.
async fn prune_telemetry(state: Arc<api::AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let days = state.loaded.load().config.telemetry_retention_days;
        let cutoff = now().saturating_sub(days * 86_400);
        match state.telemetry.prune(cutoff) {
            Ok((0, 0)) => {}
            Ok((markers, aggregates)) => {
                tracing::info!(
                    markers,
                    aggregates,
                    days,
                    "pruned telemetry past the retention"
                )
            }
            Err(error) => tracing::warn!(%error, "telemetry pruning failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            _ = stop.changed() => return,
        }
    }
}
