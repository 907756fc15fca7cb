//! `edgefleet-hub`: parse flags, set up tracing, load and validate the config, bind, run.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edgefleet_hub::config::{HubConfig, Overrides};
use edgefleet_hub::lifecycle;

#[derive(Parser)]
#[command(
    name = "edgefleet-hub",
    version,
    about = "The Edgefleet hub: model registry, devices and desired state"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args)]
struct Common {
    /// TOML config file (every key can also be set as EDGEFLEET_HUB_<KEY>).
    #[arg(long, env = "EDGEFLEET_HUB_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides the config).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:7700 (overrides the config).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where the embedded MQTT broker listens (default 127.0.0.1:7883; overrides the config).
    #[arg(long, value_name = "ADDR")]
    mqtt_listen: Option<SocketAddr>,
    /// Use this external MQTT broker instead of the embedded one, e.g. mqtt://127.0.0.1:1883.
    #[arg(long, value_name = "URL")]
    mqtt_url: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the hub.
    Serve(Common),
    /// Validate the configuration and keys, then exit (0 if valid).
    CheckConfig(Common),
}

fn load(c: &Common) -> anyhow::Result<edgefleet_hub::RuntimeConfig> {
    HubConfig::load(
        c.config.as_deref(),
        &Overrides {
            data_dir: c.data_dir.clone(),
            listen: c.listen,
            mqtt_listen: c.mqtt_listen,
            mqtt_url: c.mqtt_url.clone(),
        },
    )?
    .validate()
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Cmd::CheckConfig(c) => load(&c).map(|l| {
            println!(
                "configuration OK (data_dir {}, listen {})",
                l.config.data_dir.display(),
                l.config.listen
            )
        }),
        Cmd::Serve(c) => serve(c).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgefleet-hub: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(c: Common) -> anyhow::Result<()> {
    let loaded = load(&c)?;
    let log = lifecycle::init_logging(&loaded.config.log_format, &loaded.config.log_level);
    let listener = tokio::net::TcpListener::bind(loaded.config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is another hub running? choose another with --listen)",
                loaded.config.listen
            )
        })?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let path = c.config.clone();
    lifecycle::watch_config(path, move || match load(&c) {
        Ok(l) => {
            lifecycle::set_log_level(&log, &l.config.log_level);
            let _ = tx.try_send(l);
        }
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "reload refused; keeping the running configuration")
        }
    });
    edgefleet_hub::run_reloadable(loaded, listener, shutdown_signal()?, rx).await
}

/// Registers SIGTERM and SIGINT handlers now (before READY=1 is sent), resolving on either.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    })
}
