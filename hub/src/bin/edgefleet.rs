//! `edgefleet`, the admin CLI. Thin: parse, set up logging, hand over to the library.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EDGEFLEET_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = edgefleet_hub::cli::Cli::parse();
    match edgefleet_hub::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgefleet: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
