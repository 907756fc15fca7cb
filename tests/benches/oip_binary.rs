//! The Binary Tensor Data Extension against JSON, side by side in one run: the same requests
//! to the same in-process agent router over loopback HTTP, 8 concurrent clients, rounds
//! alternating between the two encodings so both see the same machine.
//!
//! - 1×8: the demand MLP (8 features, one output);
//! - 64×128: a linear model over 128 features, 64 rows a request (one output per row).
//!
//! Binary means binary in and out (the Triton client's default call); JSON means JSON in and
//! out. Prints requests/s, p50 and p99 per case and the binary ÷ JSON throughput ratio, then
//! the time `serve::request::decode` alone takes for each body (no HTTP, inference or window
//! profiling: the part of a request the encoding decides).
//!
//! Run: `cargo bench -p edgefleet-tests --bench oip_binary` (BENCH_SECS=N per round, default 2;
//! BENCH_ROUNDS=N rounds per encoding, default 3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgefleet_agent::active::{ActiveModels, Served};
use edgefleet_agent::model::LoadedModel;
use edgefleet_agent::serve::router;
use edgefleet_common::{DataType, TensorSpec};

fn manifest(name: &str, features: usize, artifact: &[u8]) -> edgefleet_common::ModelManifest {
    let spec = |n: &str, cols: usize| TensorSpec {
        name: n.into(),
        datatype: DataType::Fp32,
        shape: vec![-1, cols as i64],
        feature_names: vec![],
    };
    edgefleet_tests::plain_manifest(
        name,
        artifact,
        vec![spec("x", features)],
        vec![spec("y", 1)],
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// One request body and its headers.
#[derive(Clone)]
struct Request {
    body: Vec<u8>,
    header_length: Option<usize>,
}

fn json_request(rows: usize, cols: usize, data: &[f32]) -> Request {
    Request {
        body: serde_json::to_vec(&serde_json::json!({
            "inputs": [{"name": "x", "shape": [rows, cols], "datatype": "FP32", "data": data}]
        }))
        .expect("json"),
        header_length: None,
    }
}

fn binary_request(rows: usize, cols: usize, data: &[f32]) -> Request {
    let mut body = serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "x", "shape": [rows, cols], "datatype": "FP32",
                    "parameters": {"binary_data_size": data.len() * 4}}],
        "parameters": {"binary_data_output": true}
    }))
    .expect("json");
    let n = body.len();
    body.extend(data.iter().flat_map(|x| x.to_le_bytes()));
    Request {
        body,
        header_length: Some(n),
    }
}

async fn run_round(
    http: &reqwest::Client,
    url: &str,
    req: &Request,
    secs: u64,
    latencies: &mut Vec<Duration>,
) -> Duration {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (http, url, req) = (http.clone(), url.to_owned(), req.clone());
            tokio::spawn(async move {
                let mut l = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let mut r = http.post(&url).body(req.body.clone());
                    r = match req.header_length {
                        Some(n) => r.header("Inference-Header-Content-Length", n),
                        None => r.header("content-type", "application/json"),
                    };
                    let resp = r.send().await.expect("send");
                    assert!(resp.status().is_success(), "{}", resp.status());
                    let binary = resp
                        .headers()
                        .contains_key("inference-header-content-length");
                    assert_eq!(binary, req.header_length.is_some());
                    std::hint::black_box(resp.bytes().await.expect("body"));
                    l.push(t.elapsed());
                }
                l
            })
        })
        .collect();
    for t in tasks {
        latencies.extend(t.await.expect("task"));
    }
    start.elapsed()
}

fn main() -> anyhow::Result<()> {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (secs, rounds) = (env("BENCH_SECS", 2), env("BENCH_ROUNDS", 3));
    let dir = tempfile::tempdir()?;
    let models = Arc::new(ActiveModels::default());
    for (name, features, artifact) in [
        ("demand", 8, edgefleet_tests::Mlp::new(1).to_onnx()),
        ("wide", 128, edgefleet_tests::onnx::linear(128, 3)),
    ] {
        let path = dir.path().join(format!("{name}.onnx"));
        std::fs::write(&path, &artifact)?;
        models.swap_in(Arc::new(Served::new(LoadedModel::load(
            manifest(name, features, &artifact),
            &path,
        )?)));
    }
    models.set_ready();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let addr = server_rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            async move { axum::serve(listener, router(models, Default::default())).await },
        );
        anyhow::Ok(addr)
    })?;
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!(
        "OIP v2 over loopback, 8 concurrent clients, {rounds} alternating rounds of {secs} s per encoding"
    );
    println!(
        "| request | encoding | req/s | p50 µs | p99 µs | request bytes | binary ÷ JSON req/s |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut decode_lines = Vec::new();
    for (model, rows, cols) in [("demand", 1usize, 8usize), ("wide", 64, 128)] {
        let data: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0)
            .collect();
        let reqs = [
            ("JSON", json_request(rows, cols, &data)),
            ("binary", binary_request(rows, cols, &data)),
        ];
        // The decoding alone (no HTTP, no inference, no profiling), alternating.
        let mut per_call = [Duration::ZERO; 2];
        for _ in 0..5 {
            for (i, (_, r)) in reqs.iter().enumerate() {
                let header = r.header_length.map(|n| n.to_string());
                let iters = if rows > 1 { 400 } else { 40_000 };
                let t = Instant::now();
                for _ in 0..iters {
                    std::hint::black_box(
                        edgefleet_agent::serve::request::decode(
                            &r.body,
                            header.as_deref().map(str::as_bytes),
                        )
                        .expect("decode"),
                    );
                }
                per_call[i] += t.elapsed() / (iters * 5);
            }
        }
        decode_lines.push(format!(
            "| {rows}×{cols} | {:.1} | {:.1} | {:.1}× |",
            per_call[0].as_secs_f64() * 1e6,
            per_call[1].as_secs_f64() * 1e6,
            per_call[0].as_secs_f64() / per_call[1].as_secs_f64()
        ));
        let url = format!("http://{addr}/v2/models/{model}/infer");
        let (lat, time) = client_rt.block_on(async {
            let http = reqwest::Client::new();
            let mut lat = [Vec::new(), Vec::new()];
            let mut time = [Duration::ZERO; 2];
            // Warm-up, then alternate.
            let mut scratch = Vec::new();
            for (_, r) in &reqs {
                run_round(&http, &url, r, 1, &mut scratch).await;
            }
            for _ in 0..rounds {
                for (i, (_, r)) in reqs.iter().enumerate() {
                    time[i] += run_round(&http, &url, r, secs, &mut lat[i]).await;
                }
            }
            (lat, time)
        });
        let rps: Vec<f64> = (0..2)
            .map(|i| lat[i].len() as f64 / time[i].as_secs_f64())
            .collect();
        for (i, (encoding, req)) in reqs.iter().enumerate() {
            let mut l = lat[i].clone();
            l.sort();
            println!(
                "| {rows}×{cols} | {encoding} | {:.0} | {:.0} | {:.0} | {} | {} |",
                rps[i],
                percentile(&l, 0.5).as_secs_f64() * 1e6,
                percentile(&l, 0.99).as_secs_f64() * 1e6,
                req.body.len(),
                if i == 1 {
                    format!("{:.2}", rps[1] / rps[0])
                } else {
                    String::new()
                }
            );
        }
    }
    println!();
    println!("request decoding alone (serve::request::decode), µs per request");
    println!("| request | JSON | binary | JSON ÷ binary |");
    println!("|---|---|---|---|");
    for l in decode_lines {
        println!("{l}");
    }
    Ok(())
}
