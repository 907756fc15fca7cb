//! The agent's inference engine timed against native onnxruntime, side by side in one run.
//!
//!     tools/ort_bench.sh            # fetches the pinned onnxruntime wheel's library, then runs this
//!
//! or by hand, with `ORT_DYLIB_PATH` naming a `libonnxruntime.so`:
//!
//!     ORT_DYLIB_PATH=… cargo bench --profile release -p edgefleet-tests --bench onnx_ort
//!
//! For every ONNX-ML fixture and batch size (`BATCHES`, default `1,64`): the agent's whole
//! inference call (`LoadedModel::infer`: schema checks, tensor conversion, the tract plan with
//! our ONNX-ML kernels) and onnxruntime's `Session::run` (one intra-op thread, no spinning, the
//! input tensor made once, as a server would hold it) on the same rows, in alternating rounds
//! (`ROUNDS`, default 3) so the machine's noise hits both alike. Each round's figure is the
//! median of 7 timed batches of calls; the table prints each side's best round and the ratio
//! agent ÷ onnxruntime (lower is better; the goal is ≤ 1.0 at batch 1, and at batch 64 ≤ 1.0 for
//! trees and ≤ 1.5 for the rest).
//!
//! `ort` loads the library at run time (`load-dynamic`) and is a dev-dependency of this bench
//! only: no shipped binary links it (tests/tests/architecture.rs checks).

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use edgefleet_agent::model::LoadedModel;
use edgefleet_common::{Tensor, TensorData};
use edgefleet_tests::fixtures::{self, Fixture};
use ort::session::Session;
use ort::value::DynValue;

/// The median per-call time of 7 timed batches, each about a seventh of `budget`.
fn time(
    budget: Duration,
    mut call: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut calls = 0u32;
    while start.elapsed() < budget / 20 {
        call()?;
        calls += 1;
    }
    let per_batch = (calls * 20 / 7).max(1);
    let mut times = Vec::with_capacity(7);
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..per_batch {
            call()?;
        }
        times.push(t.elapsed() / per_batch);
    }
    times.sort();
    Ok(times[3])
}

/// `n` rows of the fixture's probe input (its rows repeated in order).
fn rows(f: &Fixture, n: usize) -> Tensor {
    let probe = f.input.shape[0] as usize;
    let width: usize = f.input.shape[1..].iter().map(|&d| d as usize).product();
    let pick = |i: usize| (i % probe) * width..(i % probe + 1) * width;
    let data = match &f.input.data {
        TensorData::Fp32(v) => TensorData::Fp32((0..n).flat_map(|i| v[pick(i)].to_vec()).collect()),
        TensorData::Fp64(v) => TensorData::Fp64((0..n).flat_map(|i| v[pick(i)].to_vec()).collect()),
        TensorData::Int64(v) => {
            TensorData::Int64((0..n).flat_map(|i| v[pick(i)].to_vec()).collect())
        }
        other => other.clone(),
    };
    let mut shape = f.input.shape.clone();
    shape[0] = n as u64;
    Tensor {
        name: f.input.name.clone(),
        shape,
        data,
    }
}

/// The same rows as an onnxruntime tensor.
fn ort_value(t: &Tensor) -> anyhow::Result<DynValue> {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    let value = match &t.data {
        TensorData::Fp32(v) => ort::value::Tensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::Fp64(v) => ort::value::Tensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::Int64(v) => ort::value::Tensor::from_array((shape, v.clone()))?.into_dyn(),
        other => return Err(anyhow!("no onnxruntime input for {}", other.datatype())),
    };
    Ok(value)
}

fn main() -> anyhow::Result<()> {
    let library = std::env::var("ORT_DYLIB_PATH").context(
        "ORT_DYLIB_PATH must name libonnxruntime.so (tools/ort_bench.sh fetches the pinned one)",
    )?;
    let env_list = |name: &str, default: &str| -> Vec<String> {
        std::env::var(name)
            .unwrap_or_else(|_| default.to_owned())
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let budget = Duration::from_millis(
        std::env::var("BENCH_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300),
    );
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let batches: Vec<usize> = env_list("BATCHES", "1,64")
        .iter()
        .map(|s| s.parse().context("BATCHES: comma-separated row counts"))
        .collect::<anyhow::Result<_>>()?;
    let only = std::env::var("FIXTURES").ok();

    let environment = ort::init_from(&library)
        .map_err(|e| anyhow!("loading {library}: {e}"))?
        .with_name("edgefleet-bench")
        .build()
        .map_err(|e| anyhow!("onnxruntime environment: {e}"))?;
    println!(
        "# onnxruntime from {library}; {rounds} alternating rounds, {} ms per side and round",
        budget.as_millis()
    );
    println!("| fixture | batch | agent µs | onnxruntime µs | ratio |");
    println!("|---|---|---|---|---|");
    for f in fixtures::load()? {
        if let Some(only) = &only
            && !only.split(',').any(|n| n == f.name)
        {
            continue;
        }
        let model = LoadedModel::load(f.manifest()?, &f.path)?;
        let fail = |e: &dyn std::fmt::Display| anyhow!("{}: onnxruntime session: {e}", f.name);
        let mut session = Session::builder(&environment)
            .map_err(|e| fail(&e))?
            .with_intra_threads(1)
            .map_err(|e| fail(&e))?
            .with_inter_threads(1)
            .map_err(|e| fail(&e))?
            .with_intra_op_spinning(false)
            .map_err(|e| fail(&e))?
            .commit_from_file(&f.path)
            .map_err(|e| fail(&e))?;
        for &batch in &batches {
            let input = [rows(&f, batch)];
            let value = ort_value(&input[0])?;
            let name = f.input.name.clone();
            // Both must answer before either is timed.
            model
                .infer(&input, &[])
                .map_err(|e| anyhow!("{}: agent: {e}", f.name))?;
            session
                .run(ort::inputs![name.as_str() => &value])
                .map_err(|e| anyhow!("{}: onnxruntime: {e}", f.name))?;
            let (mut agent, mut onnxruntime) = (Duration::MAX, Duration::MAX);
            for _ in 0..rounds {
                agent = agent.min(time(budget, || {
                    std::hint::black_box(model.infer(&input, &[]).map_err(anyhow::Error::msg)?);
                    Ok(())
                })?);
                onnxruntime = onnxruntime.min(time(budget, || {
                    let out = session.run(ort::inputs![name.as_str() => &value])?;
                    std::hint::black_box(out);
                    Ok(())
                })?);
            }
            println!(
                "| {} | {batch} | {:.2} | {:.2} | {:.2} |",
                f.name,
                agent.as_secs_f64() * 1e6,
                onnxruntime.as_secs_f64() * 1e6,
                agent.as_secs_f64() / onnxruntime.as_secs_f64()
            );
        }
    }
    Ok(())
}
