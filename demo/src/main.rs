//! `edgefleet-demo`: parse, tracing, [`edgefleet_demo::run`].
#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = edgefleet_demo::DemoConfig::parse();
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
    }
    // The hub's and the agents' own logs would drown the timeline: warnings only.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EDGEFLEET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,rumqttd=off")),
        )
        .init();
    edgefleet_hub::install_crypto_provider();
    match edgefleet_demo::run(config).await {
        Ok(s) if s.recovered => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
