//! The Edgefleet hub: model registry, devices and desired state, fleet telemetry.
//!
//! Layers (ARCHITECTURE.md has the picture):
//! - domain: [`hub`] (the handle), [`registry`], [`devices`], [`desired`], [`telemetry`],
//!   [`rollout`], [`retrain`],
//!   over [`store`]; errors in [`error`]. No axum, no rumqttc.
//! - transports: [`http`] (axum) and [`mqtt`] (rumqttc, rumqttd); drivers: [`drivers`]. They
//!   call the domain and never import each other.
//! - [`cli`]: the admin CLI, a client of the HTTP API plus offline commands.
//!
//! `main` parses flags and loads the configuration, then calls [`run`] with a bound listener,
//! so tests start a real hub on port 0.
//!
//! Architecture invariant: the hub never depends on the agent crate.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod desired;
pub mod devices;
pub mod drivers;
pub mod error;
pub mod http;
pub mod hub;
pub mod keyfile;
#[path = "../../agent/src/lifecycle.rs"]
pub mod lifecycle;
pub mod mqtt;
pub mod reference;
pub mod registry;
pub mod retrain;
pub mod rollout;
pub mod store;
pub mod telemetry;
#[cfg(test)]
mod testkit;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use anyhow::Context;
pub use config::{HubConfig, RuntimeConfig};
pub use hub::Hub;
pub use lifecycle::install_crypto_provider;

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
    config: RuntimeConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (_keep, reloads) = mpsc::channel(1);
    run_reloadable(config, listener, shutdown, reloads).await
}

/// [`run`], also swapping in each validated configuration received on `reloads` (SIGHUP):
/// keys, delegation, rotations, enrollment token and TTLs change at once; `data_dir` and
/// `listen` only on restart.
pub async fn run_reloadable(
    config: RuntimeConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut reloads: mpsc::Receiver<RuntimeConfig>,
) -> anyhow::Result<()> {
    let hub = Arc::new(open(config)?);
    let (stop_tx, stop_rx) = watch::channel(false);
    if hub.config().config.mqtt_enabled {
        mqtt::start(hub.clone(), stop_rx.clone()).await?;
    }
    tokio::spawn(drivers::prune::run(hub.clone(), stop_rx.clone()));
    tokio::spawn(drivers::rollout::run(hub.clone(), stop_rx.clone()));
    tokio::spawn(drivers::retrain::run(hub.clone(), stop_rx));
    let reloading = hub.clone();
    tokio::spawn(async move {
        while let Some(new) = reloads.recv().await {
            reloading.reload(new);
        }
    });
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %hub.config().config.data_dir.display(), "hub listening");
    lifecycle::ready(&format!("listening on {addr}"));
    lifecycle::spawn_watchdog();
    let stopping = hub.clone();
    axum::serve(listener, http::router(hub.clone()))
        .with_graceful_shutdown(async move {
            shutdown.await;
            lifecycle::stopping();
            stopping.begin_shutdown();
            let _ = stop_tx.send(true);
        })
        .await?;
    hub.flush().await?;
    tracing::info!("hub stopped");
    Ok(())
}

/// Creates the data dir and the admin token (printed once, on the first start), opens the hub.
fn open(config: RuntimeConfig) -> anyhow::Result<Hub> {
    let data_dir = config.config.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let (token, created) = admin_token(&data_dir)?;
    if created {
        // Afterwards it is only in the 0600 file.
        eprintln!(
            "edgefleet-hub: admin token (also in {}): {token}",
            data_dir.join(ADMIN_TOKEN_FILE).display()
        );
    }
    Hub::open(config, &token).context("cannot open the hub's store")
}
