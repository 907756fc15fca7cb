//! The matching store's memory: a day of predictions at a busy shop's rate (10 requests/s,
//! 864,000 kept predictions) must not break the agent's RSS goal. Each size runs in a child
//! process of its own (RSS is per process): it opens the store as the agent does, writes N
//! single-value predictions in batches of 20 (STORE_BATCH; the writer's 200 ms at 100/s), and prints RSS and anonymous RSS before and after, the bytes on disk and the time.
//!
//! Run: `cargo bench -p edgefleet-tests --bench feedback_store` (STORE_SIZES=2000,20000,…).

use std::time::Instant;

use edgefleet_agent::feedback::plan::{Kept, Numbers, Prediction};
use edgefleet_agent::feedback::store::{Limits, New, Store, key};

fn status(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn child(n: u64, batch: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let limits = Limits {
        max_predictions: 1_000_000,
        max_age_ms: 172_800_000,
        max_bytes: 256 << 20,
    };
    let mut store = Store::open(&dir.path().join("feedback.sqlite"), limits).expect("store");
    let (rss0, anon0) = (status("VmRSS:"), status("RssAnon:"));
    let t0 = 1_800_000_000_000u64;
    let start = Instant::now();
    let mut i = 0u64;
    while i < n {
        let k = (batch as u64).min(n - i);
        let new: Vec<New> = (i..i + k)
            .map(|j| New {
                key: key("demand", &format!("shop-0042-{j:09}")),
                prediction: Prediction {
                    version: 3,
                    at_ms: t0 + j * 100,
                    rows: 1,
                    done: Vec::new(),
                    kept: Kept::Values {
                        width: 1,
                        values: Numbers::F32(vec![17.25 + (j % 7) as f32]),
                    },
                    inputs: Vec::new(),
                },
            })
            .collect();
        store.write(new, t0 + (i + k) * 100).expect("write");
        i += k;
    }
    let secs = start.elapsed().as_secs_f64();
    let (rss1, anon1) = (status("VmRSS:"), status("RssAnon:"));
    println!(
        "| {n} | {:.1} MB | {:.1} MB | +{:.1} MB | {:.1} MB | {:.0}/s |",
        rss1 as f64 / 1024.0,
        anon1 as f64 / 1024.0,
        (anon1 as f64 - anon0 as f64) / 1024.0,
        dir_bytes(dir.path()) as f64 / 1e6,
        n as f64 / secs,
    );
    let _ = rss0;
    assert_eq!(store.held().0, n, "every prediction is held");
}

fn main() {
    if let Ok(n) = std::env::var("STORE_CHILD_N") {
        let n = n.parse().expect("n");
        let batch = std::env::var("STORE_BATCH")
            .ok()
            .and_then(|b| b.parse().ok())
            .unwrap_or(20);
        child(n, batch);
        return;
    }
    let sizes =
        std::env::var("STORE_SIZES").unwrap_or_else(|_| "0,2000,20000,200000,864000".into());
    println!("| kept predictions | VmRSS | RssAnon | RssAnon growth | on disk | writes/s |");
    println!("|---|---|---|---|---|---|");
    for n in sizes.split(',') {
        let exe = std::env::current_exe().expect("exe");
        let st = std::process::Command::new(exe)
            .env("STORE_CHILD_N", n.trim())
            .status()
            .expect("child");
        assert!(st.success(), "child for {n} failed");
    }
}
