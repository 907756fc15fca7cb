//! Push a signed model → the agent serves it; push v2 → the agent switches while clients keep
//! getting answers (only v1, then v2; never an error).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_assign_serve_then_swap_under_load() {
    let hub = Hub::start().await;
    let (mlp1, _) = hub.push_mlp("demand", 1, 1).await;
    hub.assign("shop-1", "demand", 1).await;
    let agent = Agent::start(&hub, "shop-1").await;
    let http = client();
    let rows = edgefleet_tests::probe_rows(3, 99);
    let (v, out) = eventually("v1 to be served", || {
        infer_ok(&http, &agent.url, "demand", &rows)
    })
    .await;
    assert_eq!(v, 1);
    assert_close(
        &out,
        &rows.iter().map(|r| mlp1.predict(r)).collect::<Vec<_>>(),
    );

    // Concurrent clients hammer the agent while v2 is rolled out.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, http, url, rows) = (stop.clone(), http.clone(), agent.url.clone(), rows.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = infer(&http, &url, "demand", &rows).await;
                assert_eq!(
                    r.status(),
                    200,
                    "error during swap: {}",
                    r.text().await.unwrap_or_default()
                );
                let v: serde_json::Value = r.json().await.expect("json");
                seen.push(
                    v["model_version"]
                        .as_str()
                        .expect("version")
                        .parse::<u64>()
                        .expect("number"),
                );
            }
            seen
        }));
    }
    let (mlp2, _) = hub.push_mlp("demand", 2, 2).await;
    hub.assign("shop-1", "demand", 2).await;
    let (_, out2) = eventually("v2 to be served", || {
        infer_version(&http, &agent.url, "demand", &rows, 2)
    })
    .await;
    assert_close(
        &out2,
        &rows.iter().map(|r| mlp2.predict(r)).collect::<Vec<_>>(),
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let seen = c.await.expect("client");
        total += seen.len();
        assert!(
            seen.windows(2).all(|w| w[0] <= w[1]),
            "versions went backwards: {seen:?}"
        );
        assert!(seen.iter().all(|v| *v == 1 || *v == 2));
    }
    assert!(total > 10, "clients made only {total} requests");

    // The device reported its state: v2 active, v1 kept for rollback.
    let d = eventually("status report with v2", || async {
        let d = hub.try_device("shop-1").await?;
        when(d["status"]["active"][0]["version"] == 2, d)
    })
    .await;
    assert_eq!(d["status"]["previous"][0]["version"], 1);
    assert!(
        agent.dir.path().join("models/demand/1/model.onnx").exists(),
        "previous version kept"
    );
    agent.stop().await;
}
