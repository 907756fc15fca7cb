//! `edgefleet-agent`: parse flags, set up tracing, load and validate the config, bind, run.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edgefleet_agent::{AgentConfig, lifecycle};

#[derive(Parser)]
#[command(
    name = "edgefleet-agent",
    version,
    about = "Edgefleet device agent: pulls signed ONNX models from the hub and serves them (Open Inference Protocol v2)",
    long_about = "Edgefleet device agent.\n\nIt enrolls with the hub using its device key (made on first start in DATA_DIR/device.key), follows the models assigned to it, verifies every model against the pinned root key, swaps it in atomically, and serves it over the Open Inference Protocol v2 (KServe v2 REST) at LISTEN/v2/models/NAME/infer.\n\nEvery config key can also be set as EDGEFLEET_AGENT_<KEY>, e.g. EDGEFLEET_AGENT_DEVICE_ID=shop-1."
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent.
    Run {
        /// TOML config file.
        #[arg(long, env = "EDGEFLEET_AGENT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate the configuration, naming every bad key, then exit (0 if valid).
    CheckConfig {
        #[arg(long, env = "EDGEFLEET_AGENT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Load an ONNX file as the agent would serve it and print its inputs and outputs as the
    /// `inputs`/`outputs` of an `edgefleet sign` spec (JSON). Fails, naming the operator and
    /// node, if the agent cannot serve the model.
    Inspect {
        /// The .onnx file.
        model: PathBuf,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = match Args::parse().command {
        Cmd::CheckConfig { config } => AgentConfig::load(config.as_deref())
            .and_then(|c| c.validate().map(|_| c))
            .map(|c| {
                println!(
                    "configuration OK (device {}, hub {}, listen {})",
                    c.device_id, c.hub_url, c.listen
                )
            }),
        Cmd::Run { config } => run(config).await,
        Cmd::Inspect { model } => inspect(&model),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgefleet-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn inspect(path: &std::path::Path) -> anyhow::Result<()> {
    let (inputs, outputs) = edgefleet_agent::model::describe(path).map_err(anyhow::Error::msg)?;
    let json = serde_json::json!({ "inputs": inputs, "outputs": outputs });
    let text = serde_json::to_string_pretty(&json)?;
    // A closed pipe (`| head`) is not an error worth a panic.
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

async fn run(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = AgentConfig::load(path.as_deref())?;
    config.validate()?;
    let log = lifecycle::init_logging(&config.log_format, &config.log_level);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (set listen / EDGEFLEET_AGENT_LISTEN)",
                config.listen
            )
        })?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let file = path.clone();
    lifecycle::watch_config(path, move || {
        match AgentConfig::load(file.as_deref()).and_then(|c| c.validate().map(|_| c)) {
            Ok(c) => {
                lifecycle::set_log_level(&log, &c.log_level);
                let _ = tx.try_send(c);
            }
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "reload refused; keeping the running configuration")
            }
        }
    });
    edgefleet_agent::run_reloadable(config, listener, shutdown_signal()?, rx).await
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
