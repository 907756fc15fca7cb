//! `edgefleet-train JOB_DIR`: the reference trainer (docs/trainers.md).

use std::process::ExitCode;

use clap::Parser;

/// The Edgefleet reference trainer: fits ridge regression, logistic regression (a binary
/// classifier) or gradient-boosted trees (either) on a job directory's dataset and writes
/// model.onnx and metrics.json beside it. The parent's outputs say which: FP32 [-1, 1] or [-1]
/// is a regression; INT64 labels [-1] (0 or 1), then optionally FP32 probabilities [-1, 2], a
/// binary classifier.
///
/// The job directory holds dataset.csv, dataset.schema.json, params.json and
/// parent/manifest.json, as the hub prepares it (docs/trainers.md). Example params.json:
/// {"model": "gbt", "seed": 7, "iterations": 200, "max_depth": 6}
#[derive(Parser)]
#[command(name = "edgefleet-train", version)]
struct Cli {
    /// The job directory.
    job_dir: std::path::PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let job = edgefleet_trainer::Job::new(cli.job_dir);
    let started = std::time::Instant::now();
    match edgefleet_trainer::run(&job) {
        Ok(t) => {
            let m = &t.metrics;
            eprintln!(
                "trained {:?} on {} rows ({} skipped) in {:.1} s: train {}{}",
                m.model,
                m.train.rows(),
                m.skipped,
                started.elapsed().as_secs_f64(),
                m.train,
                m.validation
                    .map(|v| format!(", validation {v}"))
                    .unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("edgefleet-train: {e}");
            ExitCode::FAILURE
        }
    }
}
