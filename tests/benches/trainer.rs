//! The reference trainer's training time on 10^5 rows of the demand table (the closed loop's
//! figure), ridge and gradient-boosted trees, through `edgefleet_trainer::run` on a job
//! directory as the hub prepares it (reading the CSV included).
//!
//! Run: `cargo bench -p edgefleet-tests --bench trainer` (TRAIN_ROWS=N, default 100000).

use std::time::Instant;

use edgefleet_tests::demand::{demand_csv, parent, schema};

fn main() -> anyhow::Result<()> {
    let rows: usize = std::env::var("TRAIN_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let csv = demand_csv(rows, 11);
    let tmp = tempfile::tempdir()?;
    for params in [
        serde_json::json!({"model": "ridge", "seed": 1}),
        serde_json::json!({"model": "gbt", "seed": 1, "iterations": 100, "max_depth": 5}),
    ] {
        let dir = tmp.path().join(params["model"].as_str().unwrap_or("m"));
        std::fs::create_dir_all(dir.join("parent"))?;
        std::fs::write(dir.join("dataset.csv"), &csv)?;
        std::fs::write(dir.join("dataset.schema.json"), schema().to_string())?;
        std::fs::write(dir.join("params.json"), params.to_string())?;
        std::fs::write(dir.join("parent/manifest.json"), parent().to_string())?;
        let t = Instant::now();
        let trained = edgefleet_trainer::run(&edgefleet_trainer::Job::new(&dir))?;
        let secs = t.elapsed().as_secs_f64();
        let v = trained
            .metrics
            .validation
            .and_then(|v| v.mae())
            .unwrap_or(f64::NAN);
        println!(
            "train {} on {rows} rows: {secs:.2} s (model {} bytes; validation MAE {v:.3})",
            params["model"].as_str().unwrap_or("?"),
            trained.onnx.len()
        );
    }
    Ok(())
}
