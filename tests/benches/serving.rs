//! Serving benchmarks (issue: foundation). Prints every figure BENCHMARKS.md quotes, with the
//! comparisons measured side by side in one run:
//! - model load + optimise time (tract, the test MLP);
//! - raw tract inference at batch 1 vs the agent's inference path (checks + conversions);
//! - SHA-256 verify throughput;
//! - OIP v2 infer over loopback HTTP vs a bare axum endpoint echoing a body of the same size:
//!   p50 / p99 latency and requests/s, alternating rounds, and the throughput ratio.
//!
//! Run: `cargo bench -p edgefleet-tests --bench serving` (BENCH_SECS=N per round, default 2).

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgefleet_agent::active::{ActiveModels, Served};
use edgefleet_agent::model::LoadedModel;
use edgefleet_agent::serve::router;
use edgefleet_common::{Digest, ModelManifest, Tensor, TensorData};
use edgefleet_tests::{FEATURES, Mlp};
use tract_onnx::prelude::*;

fn manifest(artifact: &[u8]) -> ModelManifest {
    edgefleet_tests::plain_manifest(
        "demand",
        artifact,
        vec![edgefleet_tests::input_spec()],
        vec![edgefleet_tests::output_spec()],
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn time_per_iter(iters: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..iters / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed() / iters
}

fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let mlp = Mlp::new(1);
    let artifact = mlp.to_onnx();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, &artifact)?;
    let row = edgefleet_tests::probe_rows(1, 1).remove(0);

    // Load + optimise.
    let mut loads: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let m = LoadedModel::load(manifest(&artifact), &path).expect("load");
            let d = t.elapsed();
            drop(m);
            d
        })
        .collect();
    loads.sort();
    println!(
        "model load+optimise (MLP 8-16-1): median {:?}, max {:?}",
        percentile(&loads, 0.5),
        loads[loads.len() - 1]
    );

    // Raw tract vs the agent's inference path, batch 1.
    let plan = tract_onnx::onnx()
        .model_for_path(&path)?
        .into_optimized()?
        .into_runnable()?;
    let input = tract_onnx::prelude::Tensor::from_shape(&[1, FEATURES], &row)?;
    let raw = time_per_iter(200_000, || {
        let out = plan.run(tvec![input.clone().into()]).expect("run");
        std::hint::black_box(out);
    });
    let model = LoadedModel::load(manifest(&artifact), &path)?;
    let tensor = Tensor {
        name: "x".into(),
        shape: vec![1, FEATURES as u64],
        data: TensorData::Fp32(row.clone()),
    };
    let ours = time_per_iter(200_000, || {
        std::hint::black_box(
            model
                .infer(std::slice::from_ref(&tensor), &[])
                .expect("infer"),
        );
    });
    println!(
        "inference batch 1: raw tract {:.2} µs, agent path (checks + conversion) {:.2} µs, ratio {:.2}",
        raw.as_secs_f64() * 1e6,
        ours.as_secs_f64() * 1e6,
        ours.as_secs_f64() / raw.as_secs_f64()
    );

    if std::env::var_os("BENCH_ONLY_INFERENCE").is_some() {
        return Ok(());
    }

    // Drift profiling: what an inference pays on its own path (buffering 8 inputs + 1 output +
    // latency), alternating with plain inference so both see the same machine; and the
    // sketching done off the path, per request.
    // The agent's folding task, as a thread here.
    let served = std::sync::Arc::new(Served::new(model));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let folder = {
        let (served, stop) = (served.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                served.window.fold();
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let (mut plain, mut recorded) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..5 {
        plain += time_per_iter(100_000, || {
            std::hint::black_box(
                served
                    .model
                    .infer(std::slice::from_ref(&tensor), &[])
                    .expect("infer"),
            );
        });
        recorded += time_per_iter(100_000, || {
            let out = served
                .model
                .infer(std::slice::from_ref(&tensor), &[])
                .expect("infer");
            served
                .window
                .record(std::slice::from_ref(&tensor), &out, 2.0);
            std::hint::black_box(out);
        });
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = folder.join();
    let outputs = served
        .model
        .infer(std::slice::from_ref(&tensor), &[])
        .expect("infer");
    let n_fold = 200_000u32;
    served.window.fold();
    let fold = {
        let t = Instant::now();
        let mut done = 0;
        while done < n_fold {
            for _ in 0..1000 {
                served
                    .window
                    .record(std::slice::from_ref(&tensor), &outputs, 2.0);
            }
            served.window.fold();
            done += 1000;
        }
        t.elapsed() / n_fold
    };
    println!(
        "drift profiling (8 inputs + 1 output + latency): on the inference path {:.0} ns = {:.1} % of infer ({:.2} µs → {:.2} µs); sketching off the path {:.0} ns per request",
        (recorded.saturating_sub(plain)).as_secs_f64() * 1e9 / 5.0,
        (recorded.as_secs_f64() / plain.as_secs_f64() - 1.0) * 100.0,
        plain.as_secs_f64() * 1e6 / 5.0,
        recorded.as_secs_f64() * 1e6 / 5.0,
        fold.as_secs_f64() * 1e9,
    );
    // What a window's profile weighs: 15 minutes at one request per second (900 requests of
    // varied rows), and at 10 per second.
    for per_window in [900usize, 9_000] {
        let fresh = Served::new(LoadedModel::load(manifest(&artifact), &path)?);
        for (i, r) in edgefleet_tests::probe_rows(per_window, 3)
            .into_iter()
            .enumerate()
        {
            let t = Tensor {
                name: "x".into(),
                shape: vec![1, FEATURES as u64],
                data: TensorData::Fp32(r),
            };
            let out = fresh
                .model
                .infer(std::slice::from_ref(&t), &[])
                .expect("infer");
            // Latencies spread like real ones: 20–400 µs.
            let latency = 20.0 * (1.0 + (i % 97) as f64 / 5.0);
            fresh.window.record(std::slice::from_ref(&t), &out, latency);
        }
        let w = fresh.window.close(0).expect("window");
        let bytes = w.profile.to_bytes().len() + postcard::to_stdvec(&w.latency)?.len();
        println!(
            "window profile (8 inputs + 1 output + latency), {per_window} requests: {bytes} bytes; 96 windows a day = {:.2} MB/day",
            bytes as f64 * 96.0 / 1e6
        );
    }
    if std::env::var_os("BENCH_ONLY_PROFILING").is_some() {
        return Ok(());
    }

    // SHA-256 throughput.
    let blob = vec![0x5au8; 64 * 1024 * 1024];
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed() < Duration::from_secs(1) {
        std::hint::black_box(Digest::of(&blob));
        n += 1;
    }
    let mbps = (n * blob.len()) as f64 / t.elapsed().as_secs_f64() / 1e6;
    println!("sha256 verify: {mbps:.0} MB/s");

    // HTTP: OIP infer vs bare echo, served by one 2-worker runtime on loopback.
    let models = Arc::new(ActiveModels::default());
    models.swap_in(served);
    models.set_ready();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (oip_addr, echo_addr) = server_rt.block_on(async {
        let oip = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let (a, b) = (oip.local_addr()?, echo.local_addr()?);
        tokio::spawn(async move { axum::serve(oip, router(models, Default::default())).await });
        let echo_app = axum::Router::new().route(
            "/echo",
            axum::routing::post(|b: axum::body::Bytes| async move { b }),
        );
        tokio::spawn(async move { axum::serve(echo, echo_app).await });
        anyhow::Ok((a, b))
    })?;
    let body = serde_json::json!({"id": "b", "inputs": [{"name": "x", "shape": [1, FEATURES], "datatype": "FP32", "data": row}]}).to_string();
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = client_rt.block_on(async {
        let http = reqwest::Client::new();
        let oip_url = format!("http://{oip_addr}/v2/models/demand/infer");
        let echo_url = format!("http://{echo_addr}/echo");
        let mut oip = Vec::new();
        let mut echo = Vec::new();
        let mut oip_time = Duration::ZERO;
        let mut echo_time = Duration::ZERO;
        for round in 0..4 {
            let (url, lat, total) = if round % 2 == 0 {
                (&oip_url, &mut oip, &mut oip_time)
            } else {
                (&echo_url, &mut echo, &mut echo_time)
            };
            let start = Instant::now();
            let deadline = start + Duration::from_secs(secs);
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let (http, url, body) = (http.clone(), url.clone(), body.clone());
                    tokio::spawn(async move {
                        let mut l = Vec::new();
                        while Instant::now() < deadline {
                            let t = Instant::now();
                            let r = http
                                .post(&url)
                                .header("content-type", "application/json")
                                .body(body.clone())
                                .send()
                                .await
                                .expect("send");
                            assert!(r.status().is_success());
                            r.bytes().await.expect("body");
                            l.push(t.elapsed());
                        }
                        l
                    })
                })
                .collect();
            for t in tasks {
                lat.extend(t.await.expect("task"));
            }
            *total += start.elapsed();
        }
        (oip, oip_time, echo, echo_time)
    });
    let (mut oip, oip_time, mut echo, echo_time) = results;
    oip.sort();
    echo.sort();
    let oip_rps = oip.len() as f64 / oip_time.as_secs_f64();
    let echo_rps = echo.len() as f64 / echo_time.as_secs_f64();
    println!(
        "OIP v2 infer over loopback (8 concurrent): p50 {:.0} µs, p99 {:.0} µs, {:.0} req/s",
        percentile(&oip, 0.5).as_secs_f64() * 1e6,
        percentile(&oip, 0.99).as_secs_f64() * 1e6,
        oip_rps
    );
    println!(
        "bare axum echo, same body (8 concurrent): p50 {:.0} µs, p99 {:.0} µs, {:.0} req/s",
        percentile(&echo, 0.5).as_secs_f64() * 1e6,
        percentile(&echo, 0.99).as_secs_f64() * 1e6,
        echo_rps
    );
    println!(
        "throughput ratio OIP / echo: {:.2} (goal >= 0.70)",
        oip_rps / echo_rps
    );
    Ok(())
}
