//! The Edgefleet device agent.
//!
//! It pulls signed ONNX models from the hub, verifies them against the pinned root key, swaps
//! them in atomically, keeps the previous version for rollback, and serves them over the Open
//! Inference Protocol v2. `main` parses flags and loads the configuration, then calls [`run`]
//! with a bound listener (port 0 in tests).
#![forbid(unsafe_code)]

pub mod config;
pub mod download;
pub mod error;
pub mod hub_client;
pub mod lifecycle;
pub mod model;
pub mod onnx_ml;
pub mod serve;
pub mod state;
pub mod telemetry;
pub mod update;
pub mod window;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Mutex;

pub use config::AgentConfig;

/// Installs rustls' `ring` crypto provider as the process default, which the HTTP client
/// (reqwest) and the MQTT client's TLS both use. Idempotent: the first provider installed wins.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Seconds since the Unix epoch (0 if the clock is before 1970).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs the agent until `shutdown` resolves: serves the models on disk at once, then follows
/// the hub's assignments.
pub async fn run(
    config: AgentConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (_keep, reloads) = tokio::sync::mpsc::channel(1);
    run_reloadable(config, listener, shutdown, reloads).await
}

/// [`run`], also applying each validated configuration received on `reloads` (SIGHUP).
pub async fn run_reloadable(
    config: AgentConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut reloads: tokio::sync::mpsc::Receiver<AgentConfig>,
) -> anyhow::Result<()> {
    config.validate()?;
    let layout = state::Layout::new(&config.data_dir);
    layout
        .create_dirs()
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let key = layout.load_or_create_device_key()?;
    let pinned = edgefleet_common::PublicKey::parse(&std::fs::read_to_string(&config.root_key)?)?;
    let trust = layout.load_trust(&pinned)?;
    let active = layout.load_active()?;
    let registry = Arc::new(serve::Registry::default());
    let hub = hub_client::HubClient::new(&config, key.clone())?;
    let outbox = telemetry::Outbox::open(&layout.outbox(), config.outbox_max_bytes)?;
    let telemetry = Arc::new(telemetry::Telemetry::new(
        config.device_id.clone(),
        key,
        outbox,
        registry.clone(),
        &config.data_dir,
    ));
    let _ = registry.telemetry.set(Arc::downgrade(&telemetry));
    let uplink_settings =
        telemetry::uplink::Settings::from_config(&config).map_err(|e| anyhow::anyhow!(e))?;
    let updater = Arc::new(update::Updater {
        layout,
        hub,
        registry: registry.clone(),
        trust: Mutex::new(trust),
        active: Mutex::new(active),
        last_error: Mutex::new(None),
        applying: Mutex::new(()),
        stale_assignments: Default::default(),
        config: arc_swap::ArcSwap::from_pointee(config.clone()),
    });
    {
        let mut a = updater.active.lock().await;
        updater.load_from_disk(&mut a)?;
    }
    registry.set_ready();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let loop_task = tokio::spawn(updater.clone().run(stop_rx.clone()));
    let uplink_task = tokio::spawn(telemetry::uplink::run(
        telemetry,
        uplink_settings,
        updater.clone(),
        stop_rx.clone(),
    ));
    let reloader = updater.clone();
    tokio::spawn(async move {
        while let Some(new) = reloads.recv().await {
            reloader.reload(new);
        }
    });
    let addr = listener.local_addr()?;
    tracing::info!(%addr, device = %config.device_id, hub = %config.hub_url, "agent serving OIP v2");
    let serving: Vec<String> = registry
        .snapshot()
        .values()
        .map(|m| format!("{} v{}", m.manifest.name, m.manifest.version))
        .collect();
    lifecycle::ready(&format!(
        "serving on {addr}: {}",
        if serving.is_empty() {
            "no model yet".into()
        } else {
            serving.join(", ")
        }
    ));
    lifecycle::spawn_watchdog();
    // Sketching happens here, off the request path: requests only buffer their numbers.
    let folding = registry.clone();
    let mut folding_stop = stop_rx.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = window::FULL.notified() => {}
                _ = folding_stop.changed() => return,
            }
            let models = folding.snapshot();
            let _ = tokio::task::spawn_blocking(move || {
                for m in models.values() {
                    m.window.fold();
                }
            })
            .await;
        }
    });
    axum::serve(listener, serve::router(registry))
        .with_graceful_shutdown(async move {
            shutdown.await;
            lifecycle::stopping();
            let _ = stop_tx.send(true);
        })
        .await?;
    let _ = loop_task.await;
    // The uplink closes the current window into the outbox before it returns.
    let _ = uplink_task.await;
    tracing::info!("agent stopped");
    Ok(())
}
