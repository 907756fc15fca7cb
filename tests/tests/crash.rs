//! kill -9 at any point of download or swap: after a restart the agent serves a whole model
//! from disk before the hub is reachable, resumes the download, and converges.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_during_download_resumes_and_never_serves_a_partial_model() {
    let hub = Hub::start().await;
    let (mlp1, _) = hub.push_mlp("demand", 1, 1).await;
    hub.assign("shop-1", "demand", 1).await;
    let data = tempfile::tempdir().expect("tmp");
    let http = client();
    let rows = edgefleet_tests::probe_rows(2, 3);

    let mut a = AgentProcess::spawn(&hub.url, &hub.root_pub_path, "shop-1", data.path(), None);
    let url = a.wait_listening().await;
    eventually("v1", || infer_ok(&http, &url, "demand", &rows)).await;
    a.kill9().await;

    // v2 is a 4 MB artifact; the agent aborts (like kill -9) after 1 MB is on disk.
    let (mlp2, m) = hub.push_big("demand", 2, 2).await;
    let artifact_len = m.artifact.size;
    hub.assign("shop-1", "demand", 2).await;
    let b = AgentProcess::spawn(
        &hub.url,
        &hub.root_pub_path,
        "shop-1",
        data.path(),
        Some("abort-download-after:1000000"),
    );
    let (status, logs) = b.wait_exit().await;
    assert!(
        !status.success(),
        "the fault point aborts the process\n{logs}"
    );
    let part = staging_part(data.path(), &m);
    let have = std::fs::metadata(&part)
        .expect("partial download kept")
        .len();
    assert!(have >= 1_000_000 && have < artifact_len, "{have}");

    // Hub down: the restarted agent serves the last good model (v1) from disk.
    let mut c = AgentProcess::spawn(DEAD_HUB, &hub.root_pub_path, "shop-1", data.path(), None);
    let url = c.wait_listening().await;
    let (v, out) = eventually("v1 from disk", || infer_ok(&http, &url, "demand", &rows)).await;
    assert_eq!(v, 1);
    assert_close(
        &out,
        &rows.iter().map(|r| mlp1.predict(r)).collect::<Vec<_>>(),
    );
    c.kill9().await;

    // Hub back: the download resumes where it stopped and v2 is served.
    let mut d = AgentProcess::spawn(&hub.url, &hub.root_pub_path, "shop-1", data.path(), None);
    let url = d.wait_listening().await;
    let (_, out) = eventually("v2", || infer_version(&http, &url, "demand", &rows, 2)).await;
    assert_close(
        &out,
        &rows.iter().map(|r| mlp2.predict(r)).collect::<Vec<_>>(),
    );
    assert!(
        d.log_contains("resuming download"),
        "the download resumed with a Range request:\n{}",
        d.dump()
    );
    assert!(!part.exists(), "staging is cleaned up once installed");
    d.kill9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_during_swap_serves_a_whole_model_after_restart() {
    let hub = Hub::start().await;
    hub.push_mlp("demand", 1, 1).await;
    hub.assign("shop-1", "demand", 1).await;
    let data = tempfile::tempdir().expect("tmp");
    let http = client();
    let rows = edgefleet_tests::probe_rows(2, 3);
    let mut a = AgentProcess::spawn(&hub.url, &hub.root_pub_path, "shop-1", data.path(), None);
    let url = a.wait_listening().await;
    eventually("v1", || infer_ok(&http, &url, "demand", &rows)).await;
    a.kill9().await;

    let (mlp2, _) = hub.push_mlp("demand", 2, 2).await;
    hub.assign("shop-1", "demand", 2).await;
    for fault in ["abort-before-install", "abort-before-activate"] {
        let b = AgentProcess::spawn(
            &hub.url,
            &hub.root_pub_path,
            "shop-1",
            data.path(),
            Some(fault),
        );
        let (status, logs) = b.wait_exit().await;
        assert!(!status.success(), "{fault}\n{logs}");
        let mut c = AgentProcess::spawn(DEAD_HUB, &hub.root_pub_path, "shop-1", data.path(), None);
        let url = c.wait_listening().await;
        let (v, _) = eventually("a whole model after the crash", || {
            infer_ok(&http, &url, "demand", &rows)
        })
        .await;
        assert_eq!(
            v, 1,
            "{fault}: the old model until the new one was activated"
        );
        c.kill9().await;
    }

    // kill -9 at arbitrary moments of the update, repeatedly: every restart serves a whole model.
    for delay_ms in [5u64, 20, 40, 80, 150, 300] {
        let b = AgentProcess::spawn(&hub.url, &hub.root_pub_path, "shop-1", data.path(), None);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        b.kill9().await;
        let mut c = AgentProcess::spawn(DEAD_HUB, &hub.root_pub_path, "shop-1", data.path(), None);
        let url = c.wait_listening().await;
        let (v, _) = eventually("a whole model", || infer_ok(&http, &url, "demand", &rows)).await;
        assert!(v == 1 || v == 2, "{v}");
        c.kill9().await;
    }

    let mut d = AgentProcess::spawn(&hub.url, &hub.root_pub_path, "shop-1", data.path(), None);
    let url = d.wait_listening().await;
    let (_, out) = eventually("v2", || infer_version(&http, &url, "demand", &rows, 2)).await;
    assert_close(
        &out,
        &rows.iter().map(|r| mlp2.predict(r)).collect::<Vec<_>>(),
    );
    d.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_active_model_falls_back_to_the_previous_one() {
    let hub = Hub::start().await;
    hub.push_mlp("demand", 1, 1).await;
    hub.assign("shop-1", "demand", 1).await;
    let agent = Agent::start(&hub, "shop-1").await;
    let http = client();
    let rows = edgefleet_tests::probe_rows(1, 3);
    eventually("v1", || infer_ok(&http, &agent.url, "demand", &rows)).await;
    hub.push_mlp("demand", 2, 2).await;
    hub.assign("shop-1", "demand", 2).await;
    eventually("v2", || {
        infer_version(&http, &agent.url, "demand", &rows, 2)
    })
    .await;
    let dir = agent.stop().await;
    // Disk damage to the active version.
    let f = dir.path().join("models/demand/2/model.onnx");
    let mut bytes = std::fs::read(&f).expect("read");
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&f, bytes).expect("damage");
    let mut hub = hub;
    hub.url = DEAD_HUB.into();
    let agent = Agent::start_in(&hub, "shop-1", dir).await;
    let (v, _) = eventually("fallback to v1", || {
        infer_ok(&http, &agent.url, "demand", &rows)
    })
    .await;
    assert_eq!(v, 1);
    agent.stop().await;
}
