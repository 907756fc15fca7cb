//! The reference trainer's training time on 10^5 rows of the demand table (the closed loop's
//! figure): the regressions (ridge, gradient-boosted trees) on the demand, the binary
//! classifiers (logistic regression, trees with log-loss) on "busy day or not", through
//! `edgefleet_trainer::run` on a job directory as the hub prepares it (reading the CSV
//! included).
//!
//! Run: `cargo bench -p edgefleet-tests --bench trainer` (TRAIN_ROWS=N, default 100000).

use std::time::Instant;

use edgefleet_tests::demand::{busy_day_csv, classifier_parent, demand_csv, parent, schema};

fn main() -> anyhow::Result<()> {
    let rows: usize = std::env::var("TRAIN_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let (demand, busy) = (demand_csv(rows, 11), busy_day_csv(rows, 11));
    let (regression, classifier) = (parent(), classifier_parent());
    let tmp = tempfile::tempdir()?;
    for (name, params, csv, parent) in [
        (
            "ridge",
            serde_json::json!({"model": "ridge", "seed": 1}),
            &demand,
            &regression,
        ),
        (
            "gbt",
            serde_json::json!({"model": "gbt", "seed": 1, "iterations": 100, "max_depth": 5}),
            &demand,
            &regression,
        ),
        (
            "logistic",
            serde_json::json!({"model": "logistic", "seed": 1}),
            &busy,
            &classifier,
        ),
        (
            "gbt classifier",
            serde_json::json!({"model": "gbt", "seed": 1, "iterations": 100, "max_depth": 5}),
            &busy,
            &classifier,
        ),
    ] {
        let dir = tmp.path().join(name.replace(' ', "-"));
        std::fs::create_dir_all(dir.join("parent"))?;
        std::fs::write(dir.join("dataset.csv"), csv)?;
        std::fs::write(dir.join("dataset.schema.json"), schema().to_string())?;
        std::fs::write(dir.join("params.json"), params.to_string())?;
        std::fs::write(dir.join("parent/manifest.json"), parent.to_string())?;
        let t = Instant::now();
        let trained = edgefleet_trainer::run(&edgefleet_trainer::Job::new(&dir))?;
        let secs = t.elapsed().as_secs_f64();
        let validation = trained
            .metrics
            .validation
            .map_or_else(|| "none".to_owned(), |v| v.to_string());
        println!(
            "train {name} on {rows} rows: {secs:.2} s (model {} bytes; validation {validation})",
            trained.onnx.len()
        );
    }
    Ok(())
}
