//! Desired state by tag: every device with the tag follows it; a device-specific assignment
//! overrides the tag; the CLI-facing listing shows both.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn tag_assignments_reach_tagged_devices_and_device_assignments_win() {
    let hub = Hub::start().await;
    hub.push_mlp("demand", 1, 1).await;
    hub.push_mlp("demand", 2, 2).await;
    let tagged = |id: &'static str| {
        let hub = &hub;
        async move {
            let dir = tempfile::tempdir().expect("tmp");
            Agent::start_with(hub, id, dir, |c| c.tags = vec!["shops".into()]).await
        }
    };
    let a = tagged("shop-1").await;
    let b = tagged("shop-2").await;
    let untagged = Agent::start(&hub, "van-1").await;
    let r = hub
        .http
        .post(hub.api("assignments"))
        .bearer_auth(&hub.token)
        .json(&serde_json::json!({"target": {"tag": "shops"}, "model": "demand", "version": 1}))
        .send()
        .await
        .expect("assign");
    assert_eq!(r.status(), 200);
    hub.assign("shop-2", "demand", 2).await;
    let http = client();
    let rows = edgefleet_tests::probe_rows(1, 2);
    let version = |url: String| {
        let (http, rows) = (http.clone(), rows.clone());
        async move { infer_ok(&http, &url, "demand", &rows).await.map(|(v, _)| v) }
    };
    assert_eq!(
        eventually("shop-1 on the tag's v1", || version(a.url.clone())).await,
        1
    );
    eventually("shop-2 on its own v2", || {
        infer_version(&http, &b.url, "demand", &rows, 2)
    })
    .await;
    // The untagged device enrolled and reported, but serves nothing.
    eventually("van-1 to report", || async {
        let d = hub.try_device("van-1").await?;
        when(d["status"]["active"].is_array(), d)
    })
    .await;
    assert_eq!(
        infer(&http, &untagged.url, "demand", &rows).await.status(),
        404
    );
    let desired: serde_json::Value = hub
        .http
        .get(hub.api("assignments"))
        .bearer_auth(&hub.token)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(desired.as_array().expect("array").len(), 2);
    for agent in [a, b, untagged] {
        agent.stop().await;
    }
}
