//! Feedback (ground truth) benchmarks. Prints, each comparison measured side by side in one
//! run:
//! - what keeping a prediction for feedback costs the inference path: the agent's inference
//!   (the MLP, batch 1) with and without recording an id, alternating rounds of 10,000 (the
//!   writer drains the queue between rounds, untimed, as its 200 ms task does), and the
//!   percentage of the inference time (goal ≤ 3 %);
//! - the same over HTTP: OIP infer on loopback with an id in the body vs without, alternating
//!   rounds, 8 concurrent clients, the writer task running;
//! - the writer: predictions per second moved from the queue into the store (committed);
//! - feedback calls per second: in-process (`Feedback::submit`, one item per call, against a
//!   store of 100,000 predictions) and over HTTP (8 concurrent clients, one item per call).
//!
//! Run: `cargo bench -p edgefleet-tests --bench feedback` (BENCH_SECS=N per HTTP round,
//! default 2).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use edgefleet_agent::active::{ActiveModels, Served};
use edgefleet_agent::feedback::{Feedback, Limits};
use edgefleet_agent::model::LoadedModel;
use edgefleet_agent::serve::router_with_feedback;
use edgefleet_common::{ModelManifest, Tensor, TensorData};
use edgefleet_tests::{FEATURES, Mlp};

fn manifest(artifact: &[u8]) -> ModelManifest {
    edgefleet_tests::plain_manifest(
        "demand",
        artifact,
        vec![edgefleet_tests::input_spec()],
        vec![edgefleet_tests::output_spec()],
    )
}

const LIMITS: Limits = Limits {
    max_predictions: 1_000_000,
    max_age_ms: 172_800_000,
    max_bytes: 256 << 20,
};

fn now_ms() -> u64 {
    edgefleet_agent::now_ms()
}

fn open(dir: &std::path::Path) -> anyhow::Result<Arc<Feedback>> {
    std::fs::create_dir_all(dir)?;
    Ok(Arc::new(Feedback::open(
        &dir.join("feedback.sqlite"),
        LIMITS,
        now_ms(),
    )?))
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
    let model = LoadedModel::load(manifest(&artifact), &path)?;
    let tensor = Tensor {
        name: "x".into(),
        shape: vec![1, FEATURES as u64],
        data: TensorData::Fp32(row.clone()),
    };

    // 1. The inference path with and without recording an id.
    let fb = open(&dir.path().join("a"))?;
    // What the agent decides once when it puts the model in service (`Served::scoring`).
    let scoring = Arc::new(edgefleet_agent::feedback::plan::Plan::for_manifest(
        &model.manifest,
    ));
    const ROUND: usize = 10_000;
    const ROUNDS: usize = 20;
    let ids: Vec<String> = (0..ROUND * ROUNDS).map(|i| format!("req-{i}")).collect();
    let infer = || {
        model
            .infer(std::slice::from_ref(&tensor), &[])
            .expect("infer")
    };
    for _ in 0..ROUND {
        std::hint::black_box(infer());
    }
    let (mut plain, mut recorded) = (Duration::ZERO, Duration::ZERO);
    for round in 0..ROUNDS {
        // Both rounds read the round's ids (a request carries one either way): what differs
        // is recording it, not fetching 10,000 strings into the cache.
        let plain_round = || {
            let t = Instant::now();
            for id in &ids[round * ROUND..(round + 1) * ROUND] {
                std::hint::black_box(id.as_bytes().first().copied());
                std::hint::black_box(infer());
            }
            t.elapsed()
        };
        let recorded_round = || {
            let t = Instant::now();
            for id in &ids[round * ROUND..(round + 1) * ROUND] {
                let out = infer();
                fb.record(&scoring, id, &[], &out);
                std::hint::black_box(out);
            }
            t.elapsed()
        };
        // Which goes first alternates: the round right after the writer's commit runs with
        // colder caches.
        if round % 2 == 0 {
            plain += plain_round();
            recorded += recorded_round();
        } else {
            recorded += recorded_round();
            plain += plain_round();
        }
        fb.drain(now_ms())?;
    }
    let n = (ROUND * ROUNDS) as f64;
    let (plain_ns, recorded_ns) = (
        plain.as_secs_f64() * 1e9 / n,
        recorded.as_secs_f64() * 1e9 / n,
    );
    let stats = fb.stats();
    println!(
        "recording an id on the inference path (MLP 8-16-1, batch 1): {:.0} ns = {:.1} % of infer ({:.2} µs → {:.2} µs; goal ≤ 3 %); {} predictions held, {} dropped",
        recorded_ns - plain_ns,
        (recorded_ns / plain_ns - 1.0) * 100.0,
        plain_ns / 1e3,
        recorded_ns / 1e3,
        stats.held,
        stats.dropped
    );

    // 2. The writer: predictions per second from the queue into the store, committed.
    let fb = open(&dir.path().join("b"))?;
    let out = infer();
    let mut written = 0u64;
    let mut recording = Duration::ZERO;
    let mut writing = Duration::ZERO;
    for chunk in 0..20 {
        let ids: Vec<String> = (0..10_000).map(|i| format!("w-{chunk}-{i}")).collect();
        let t = Instant::now();
        for id in &ids {
            fb.record(&scoring, id, &[], &out);
        }
        recording += t.elapsed();
        let t = Instant::now();
        written += fb.drain(now_ms())?.added;
        writing += t.elapsed();
    }
    println!(
        "Feedback::record alone (no inference around it): {:.0} ns per prediction",
        recording.as_secs_f64() * 1e9 / 200_000.0
    );
    println!(
        "writer: {:.0} predictions/s into the store (batches of 10,000, committed); store {} predictions, {:.1} MB",
        written as f64 / writing.as_secs_f64(),
        fb.stats().held,
        fb.stats().held_bytes as f64 / 1e6
    );

    // 3. Feedback calls in process: one item each, against the 200,000 predictions just held.
    let t = Instant::now();
    let mut calls = 0u64;
    while t.elapsed() < Duration::from_secs(secs) && calls < 200_000 {
        let (chunk, i) = (calls / 10_000, calls % 10_000);
        let body = format!(r#"{{"feedback": [{{"id": "w-{chunk}-{i}", "truth": 1.5}}]}}"#);
        let o = fb
            .submit("demand", Some(1), None, body.as_bytes())
            .map_err(|r| anyhow::anyhow!("{r:?}"))?;
        assert_eq!(o.matched, 1);
        calls += 1;
    }
    println!(
        "feedback in process (Feedback::submit, 1 item per call, store of 200,000): {:.0} calls/s",
        calls as f64 / t.elapsed().as_secs_f64()
    );

    // 4. HTTP: infer with an id vs without, then feedback calls.
    let fb = open(&dir.path().join("c"))?;
    let models = Arc::new(ActiveModels::default());
    models.swap_in(Arc::new(Served::new(LoadedModel::load(
        manifest(&artifact),
        &path,
    )?)));
    models.set_ready();
    let stop = Arc::new(AtomicBool::new(false));
    // The agent's writer task, as a thread.
    let writer = {
        let (fb, stop) = (fb.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(edgefleet_agent::feedback::DRAIN_INTERVAL);
                let _ = fb.drain(now_ms());
            }
        })
    };
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let addr = server_rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let a = l.local_addr()?;
        let app = router_with_feedback(models, Default::default(), Some(fb.clone()));
        tokio::spawn(async move { axum::serve(l, app).await });
        anyhow::Ok(a)
    })?;
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let row_json = serde_json::to_string(&row)?;
    let infer_url = format!("http://{addr}/v2/models/demand/infer");
    let feedback_url = format!("http://{addr}/v2/models/demand/feedback");
    let (with_id, without_id, ids_sent) = client_rt.block_on(async {
        let http = reqwest::Client::new();
        let (mut with, mut without) = ((0u64, Duration::ZERO), (0u64, Duration::ZERO));
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        for round in 0..6 {
            let id = round % 2 == 0;
            let start = Instant::now();
            let deadline = start + Duration::from_secs(secs);
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let (http, url, row_json, counter) =
                        (http.clone(), infer_url.clone(), row_json.clone(), counter.clone());
                    tokio::spawn(async move {
                        let mut n = 0u64;
                        while Instant::now() < deadline {
                            let id_field = if id {
                                let k = counter.fetch_add(1, Ordering::Relaxed);
                                format!(r#""id": "h-{k}", "#)
                            } else {
                                // The same allocation, no id.
                                String::from(r#""parameters": {}, "#)
                            };
                            let body = format!(
                                r#"{{{id_field}"inputs": [{{"name": "x", "shape": [1, {FEATURES}], "datatype": "FP32", "data": {row_json}}}]}}"#
                            );
                            let r = http
                                .post(&url)
                                .header("content-type", "application/json")
                                .body(body)
                                .send()
                                .await
                                .expect("send");
                            assert!(r.status().is_success());
                            r.bytes().await.expect("body");
                            n += 1;
                        }
                        (n, id)
                    })
                })
                .collect();
            for t in tasks {
                let (n, _) = t.await.expect("task");
                if id {
                    with.0 += n;
                } else {
                    without.0 += n;
                }
            }
            if id {
                with.1 += start.elapsed();
            } else {
                without.1 += start.elapsed();
            }
        }
        (with, without, counter.load(Ordering::Relaxed))
    });
    let rps = |(n, t): (u64, Duration)| n as f64 / t.as_secs_f64();
    let (with_rps, without_rps) = (rps(with_id), rps(without_id));
    println!(
        "OIP infer over loopback (8 concurrent): with an id {:.0} req/s, without {:.0} req/s: recording costs {:.1} % of throughput (goal ≤ 3 %)",
        with_rps,
        without_rps,
        (1.0 - with_rps / without_rps) * 100.0
    );
    // Let the writer catch up, then answer the predictions over HTTP.
    std::thread::sleep(Duration::from_millis(500));
    let held = fb.stats();
    let (calls, elapsed, statuses) = client_rt.block_on(async {
        let http = reqwest::Client::new();
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let start = Instant::now();
        let deadline = start + Duration::from_secs(secs);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (http, url, next) = (http.clone(), feedback_url.clone(), next.clone());
                tokio::spawn(async move {
                    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
                    while Instant::now() < deadline {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= ids_sent {
                            break;
                        }
                        let r = http
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(format!(
                                r#"{{"feedback": [{{"id": "h-{k}", "truth": 1.5}}]}}"#
                            ))
                            .send()
                            .await
                            .expect("send");
                        *statuses.entry(r.status().as_u16()).or_default() += 1;
                        r.bytes().await.expect("body");
                    }
                    statuses
                })
            })
            .collect();
        let mut all = std::collections::BTreeMap::<u16, u64>::new();
        for t in tasks {
            for (s, n) in t.await.expect("task") {
                *all.entry(s).or_default() += n;
            }
        }
        (all.values().sum::<u64>(), start.elapsed(), all)
    });
    println!(
        "feedback over loopback (8 concurrent, 1 item per call): {:.0} calls/s; statuses {statuses:?}; store held {} predictions, dropped {}",
        calls as f64 / elapsed.as_secs_f64(),
        held.held,
        held.dropped
    );
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    Ok(())
}
