//! The Edgefleet device agent.
//!
//! It pulls signed ONNX models from the hub, verifies them against the pinned root key, swaps
//! them in atomically, keeps the previous version for rollback, and serves them over the Open
//! Inference Protocol v2. `main` parses flags and loads the configuration, then calls [`run`]
//! with a bound listener (port 0 in tests).
#![forbid(unsafe_code)]

pub mod active;
pub mod config;
pub mod download;
pub mod error;
pub mod feedback;
pub mod hub_client;
pub mod lifecycle;
pub mod serve;
pub mod state;
pub mod telemetry;
pub mod update;
pub mod window;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;

pub use config::AgentConfig;
/// The engine the agent serves models with (its own crate, so the hub scores candidates with
/// the same code).
pub use edgefleet_engine::{model, onnx_ml};
pub use lifecycle::install_crypto_provider;

/// Seconds since the Unix epoch (0 if the clock is before 1970).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
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
    let Parts {
        models,
        telemetry,
        feedback,
        uplink_settings,
        updater,
    } = open_parts(&config).await?;
    models.set_ready();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics = serve::Metrics {
        telemetry: Arc::downgrade(&telemetry),
        stale_assignments: Some(updater.stale_assignments.clone()),
    };
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
    announce_ready(&listener, &config, &models)?;
    lifecycle::spawn_watchdog();
    spawn_folding(models.clone(), stop_rx.clone());
    let writer_task = spawn_feedback_writer(feedback.clone(), stop_rx.clone());
    axum::serve(
        listener,
        serve::router_with_feedback(models, metrics, Some(feedback.clone())),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        lifecycle::stopping();
        let _ = stop_tx.send(true);
    })
    .await?;
    let _ = loop_task.await;
    let _ = writer_task.await;
    // The server has drained: what its last requests queued goes to disk now.
    let _ = tokio::task::spawn_blocking(move || write_feedback(&feedback)).await;
    // The uplink closes the current window into the outbox before it returns.
    let _ = uplink_task.await;
    tracing::info!("agent stopped");
    Ok(())
}

/// What the agent runs on, opened from the configuration and the data directory.
struct Parts {
    models: Arc<active::ActiveModels>,
    telemetry: Arc<telemetry::Telemetry>,
    feedback: Arc<feedback::Feedback>,
    uplink_settings: telemetry::uplink::Settings,
    updater: Arc<update::Updater>,
}

/// Opens the data directory (keys, trust, active set, outbox), builds the parts on it, and
/// serves the models on disk: the agent serves what it had before the hub is reachable.
async fn open_parts(config: &AgentConfig) -> anyhow::Result<Parts> {
    config.validate()?;
    let layout = state::Layout::new(&config.data_dir);
    layout
        .create_dirs()
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let key = layout.load_or_create_device_key()?;
    let pinned = edgefleet_common::PublicKey::parse(&std::fs::read_to_string(&config.root_key)?)?;
    let trust = layout.load_trust(&pinned)?;
    let active = layout.load_active()?;
    let models = Arc::new(active::ActiveModels::default());
    let hub = hub_client::HubClient::new(config, key.clone())?;
    let outbox = telemetry::Outbox::open(&layout.outbox(), config.outbox_max_bytes)?;
    // Earlier agents kept the matching store in the outbox's sled database: reclaim its space.
    feedback::store::drop_sled_trees(outbox.database());
    let feedback = Arc::new(feedback::Feedback::open(
        &layout.feedback(),
        config.feedback_limits(),
        now_ms(),
    )?);
    let telemetry = Arc::new(
        telemetry::Telemetry::new(
            config.device_id.clone(),
            key,
            outbox,
            models.clone(),
            &config.data_dir,
        )
        .with_quality(feedback.clone()),
    );
    let uplink_settings =
        telemetry::uplink::Settings::from_config(config).map_err(|e| anyhow::anyhow!(e))?;
    let updater = Arc::new(
        update::Updater::new(config.clone(), layout, hub, models.clone(), trust, active)
            .with_capture(feedback.capture().clone()),
    );
    {
        let mut a = updater.active.lock().await;
        updater.load_from_disk(&mut a)?;
    }
    Ok(Parts {
        models,
        telemetry,
        feedback,
        uplink_settings,
        updater,
    })
}

/// Logs where the agent serves and tells systemd it is ready, with what it serves.
fn announce_ready(
    listener: &tokio::net::TcpListener,
    config: &AgentConfig,
    models: &active::ActiveModels,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, device = %config.device_id, hub = %config.hub_url, "agent serving OIP v2");
    let serving: Vec<String> = models
        .snapshot()
        .values()
        .map(|s| format!("{} v{}", s.model.manifest.name, s.model.manifest.version))
        .collect();
    lifecycle::ready(&format!(
        "serving on {addr}: {}",
        if serving.is_empty() {
            "no model yet".into()
        } else {
            serving.join(", ")
        }
    ));
    Ok(())
}

/// Sketching happens here, off the request path: requests only buffer their numbers. Folds
/// every 500 ms, and at once when a buffer fills, until `stop` changes.
fn spawn_folding(models: Arc<active::ActiveModels>, mut stop: tokio::sync::watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = window::FULL.notified() => {}
                _ = stop.changed() => return,
            }
            let served = models.snapshot();
            let _ = tokio::task::spawn_blocking(move || {
                for s in served.values() {
                    s.window.fold();
                }
            })
            .await;
        }
    });
}

/// The feedback writer: every [`feedback::DRAIN_INTERVAL`] moves the predictions the inference
/// path queued into the store and flushes it (sled's blocking `flush`: its `flush_async` can
/// hang), until `stop` changes. It runs on one thread of its own for the agent's life: its
/// sled work then allocates in one malloc arena, where on the blocking pool's changing threads
/// it spread over several and held about twice the memory (BENCHMARKS.md, ground truth).
fn spawn_feedback_writer(
    feedback: Arc<feedback::Feedback>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let (quit, quit_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("feedback-writer".into())
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                quit_rx.recv_timeout(feedback::DRAIN_INTERVAL)
            {
                write_feedback(&feedback);
            }
        });
    let thread = match thread {
        Ok(t) => Some(t),
        Err(error) => {
            tracing::error!(%error, "cannot start the feedback writer: predictions with an id stay queued until dropped");
            None
        }
    };
    tokio::spawn(async move {
        let _ = stop.changed().await;
        drop(quit);
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    })
}

/// One round of the feedback writer: move the queue into the store.
fn write_feedback(feedback: &feedback::Feedback) {
    // Errors are logged (and the predictions counted as dropped) by `drain`.
    let _ = feedback.drain(now_ms());
}
