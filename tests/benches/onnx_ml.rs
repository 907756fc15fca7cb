//! Batch-1 inference time of every ONNX-ML fixture through the agent's inference path
//! (`LoadedModel::infer`: schema checks, tensor conversion, the tract plan with our ONNX-ML
//! kernels).
//!
//!     cargo bench --profile release -p edgefleet-tests --bench onnx_ml
//!
//! Prints one `name<TAB>nanoseconds` line per fixture (median of 7 timed batches). The side-by-
//! side comparison with onnxruntime is `tools/fixtures/bench.py`, which runs this and
//! onnxruntime alternately in one run.

use std::time::{Duration, Instant};

use edgefleet_agent::model::LoadedModel;
use edgefleet_tests::fixtures;

fn main() -> anyhow::Result<()> {
    let budget = Duration::from_millis(
        std::env::var("BENCH_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300),
    );
    let only = std::env::var("FIXTURES").ok();
    for f in fixtures::load()? {
        if let Some(only) = &only
            && !only.split(',').any(|n| n == f.name)
        {
            continue;
        }
        let model = LoadedModel::load(f.manifest()?, &f.path)?;
        let row = [f.row(0)];
        // Calibrate: how many calls fill a seventh of the budget.
        let start = Instant::now();
        let mut calls = 0u32;
        while start.elapsed() < budget / 20 {
            model.infer(&row, &[]).map_err(anyhow::Error::msg)?;
            calls += 1;
        }
        let per_batch = (calls * 20 / 7).max(1);
        let mut times: Vec<Duration> = (0..7)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..per_batch {
                    let _ = std::hint::black_box(model.infer(&row, &[]));
                }
                t.elapsed() / per_batch
            })
            .collect();
        times.sort();
        println!("{}\t{}", f.name, times[3].as_nanos());
    }
    Ok(())
}
