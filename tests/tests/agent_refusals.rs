//! The agent refuses what it must not serve, keeps serving its current model, and reports why.

mod support;

use std::sync::Arc;

use edgefleet_agent::active::ActiveModels;
use edgefleet_agent::hub_client::HubClient;
use edgefleet_agent::state::Layout;
use edgefleet_agent::update::Updater;
use edgefleet_common::device::AssignmentBundle;
use edgefleet_common::{Assignment, Digest, ModelManifest, SecretKey, Signed, Target};
use edgefleet_tests::Mlp;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn failing_smoke_test_keeps_the_old_model_and_reports_why() {
    let hub = Hub::start().await;
    hub.push_mlp("demand", 1, 1).await;
    hub.assign("shop-1", "demand", 1).await;
    let agent = Agent::start(&hub, "shop-1").await;
    let http = client();
    let rows = edgefleet_tests::probe_rows(2, 5);
    eventually("v1", || infer_ok(&http, &agent.url, "demand", &rows)).await;

    // v2's manifest expects numbers the model does not produce.
    let mlp = Mlp::new(2);
    let artifact = mlp.to_onnx();
    let mut m = hub.manifest("demand", 2, &mlp, &artifact);
    if let edgefleet_common::TensorData::Fp32(v) = &mut m.smoke_tests[0].expected[0].data {
        v[0] += 1.0;
    }
    hub.push(&m, &artifact).await;
    hub.assign("shop-1", "demand", 2).await;
    let e = hub.wait_error("shop-1", "smoke test").await;
    assert!(e.contains("expected"), "{e}");
    assert_eq!(
        infer_ok(&http, &agent.url, "demand", &rows)
            .await
            .expect("still serving")
            .0,
        1
    );
    assert!(
        !agent.dir.path().join("models/demand/2").exists(),
        "a failing model is never installed"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_or_oversize_artifacts_are_refused() {
    let hub = Hub::start().await;
    let (_, artifact) = hub.push_mlp("demand", 1, 1).await;
    // A malicious mirror: the hub's stored blob is altered after upload (same size).
    let blob = hub
        .dir
        .path()
        .join("data/blobs/sha256")
        .join(Digest::of(&artifact).to_hex());
    let mut bytes = std::fs::read(&blob).expect("blob");
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&blob, &bytes).expect("tamper");
    hub.assign("shop-1", "demand", 1).await;
    let agent = Agent::start(&hub, "shop-1").await;
    let e = hub.wait_error("shop-1", "hash mismatch").await;
    assert!(e.contains("discarded"), "{e}");
    let http = client();
    let r = infer(
        &http,
        &agent.url,
        "demand",
        &edgefleet_tests::probe_rows(1, 1),
    )
    .await;
    assert_eq!(r.status(), 404, "nothing is served");
    agent.stop().await;

    // The hub serves more bytes than the manifest allows: the agent stops at the signed size.
    let mut longer = std::fs::read(&blob).expect("blob");
    longer[n / 2] ^= 0xff;
    longer.extend_from_slice(&[0u8; 100]);
    std::fs::write(&blob, &longer).expect("extend");
    let agent = Agent::start(&hub, "shop-2").await;
    hub.assign("shop-2", "demand", 1).await;
    hub.wait_error("shop-2", "more than").await;
    agent.stop().await;

    // A device whose own cap is below the artifact size.
    std::fs::write(&blob, &artifact).expect("restore");
    let dir = tempfile::tempdir().expect("tmp");
    let agent = Agent::start_with(&hub, "shop-3", dir, |c| c.max_model_bytes = 100).await;
    hub.assign("shop-3", "demand", 1).await;
    hub.wait_error("shop-3", "max_model_bytes").await;
    agent.stop().await;
}

/// An updater over the real agent library and the real hub, for feeding it crafted bundles.
async fn updater(hub: &Hub, id: &str, dir: &std::path::Path) -> Updater {
    let config = hub.agent_config(id, dir);
    let layout = Layout::new(dir);
    layout.create_dirs().expect("dirs");
    let key = layout.load_or_create_device_key().expect("key");
    let trust = layout.load_trust(&hub.root.public()).expect("trust");
    let hub_client = HubClient::new(&config, key).expect("client");
    Updater::new(
        config,
        layout,
        hub_client,
        Arc::new(ActiveModels::default()),
        trust,
        Default::default(),
    )
}

async fn manifest_digest(hub: &Hub, name: &str, version: u64) -> Digest {
    let bytes = hub
        .http
        .get(hub.api(&format!("models/{name}/versions/{version}/manifest")))
        .bearer_auth(&hub.token)
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    Signed::<ModelManifest>::from_bytes(&bytes)
        .expect("manifest")
        .digest()
}

fn bundle(a: Assignment, key: &SecretKey) -> AssignmentBundle {
    AssignmentBundle {
        assignments: vec![Signed::sign(&a, key, None).expect("sign")],
        rotations: vec![],
        window: None,
        assigned: None,
        capture: vec![],
        format: 0,
    }
}

/// A hub with demand v1 and v2, an updater for shop-1 over a fresh data dir, and the two
/// versions' manifest digests.
async fn demand_v1_v2() -> (Hub, tempfile::TempDir, Updater, Digest, Digest) {
    let hub = Hub::start().await;
    hub.push_mlp("demand", 1, 1).await;
    hub.push_mlp("demand", 2, 2).await;
    let dir = tempfile::tempdir().expect("tmp");
    let u = updater(&hub, "shop-1", dir.path()).await;
    let (d1, d2) = (
        manifest_digest(&hub, "demand", 1).await,
        manifest_digest(&hub, "demand", 2).await,
    );
    (hub, dir, u, d1, d2)
}

/// Demand `version` for shop-1, valid for an hour from `now`.
fn assign_demand(version: u64, serial: u64, digest: Digest, now: u64) -> Assignment {
    Assignment {
        target: Target::Device("shop-1".into()),
        model: "demand".into(),
        version,
        manifest_digest: digest,
        serial,
        issued_at: now,
        expires_at: now + 3600,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_expired_misdirected_and_untrusted_assignments_are_refused() {
    let (hub, dir, u, d1, d2) = demand_v1_v2().await;
    let now = now();
    let a = |version: u64, serial: u64, digest: Digest| assign_demand(version, serial, digest, now);
    u.apply(&bundle(a(1, 10, d1), &hub.root), now)
        .await
        .expect("v1");
    u.apply(&bundle(a(2, 20, d2), &hub.root), now)
        .await
        .expect("v2");
    assert_eq!(
        u.models
            .get("demand")
            .expect("served")
            .model
            .manifest
            .version,
        2
    );

    let err = |r: Result<(), edgefleet_agent::error::AgentError>| {
        r.expect_err("must be refused").to_string()
    };
    // Replay of an older assignment (lower serial).
    let e = err(u.apply(&bundle(a(1, 15, d1), &hub.root), now).await);
    assert!(e.contains("replayed"), "{e}");
    // Expired.
    let mut expired = a(1, 30, d1);
    expired.expires_at = now - 1;
    assert!(err(u.apply(&bundle(expired, &hub.root), now).await).contains("expired"));
    // For another device.
    let mut other = a(1, 31, d1);
    other.target = Target::Device("shop-9".into());
    assert!(err(u.apply(&bundle(other, &hub.root), now).await).contains("not this device"));
    // Signed by a key nobody delegated to.
    let e = err(u
        .apply(
            &bundle(a(1, 32, d1), &SecretKey::generate().expect("k")),
            now,
        )
        .await);
    assert!(e.contains("not trusted"), "{e}");
    // Mix-and-match: version 1 with version 2's manifest digest.
    let e = err(u.apply(&bundle(a(1, 33, d2), &hub.root), now).await);
    assert!(e.contains("binds"), "{e}");
    assert_eq!(
        u.models
            .get("demand")
            .expect("served")
            .model
            .manifest
            .version,
        2,
        "still serving v2"
    );
    assert_eq!(u.trust.lock().await.serials["demand"], 20);

    // Persisted: a restarted updater still refuses the replay.
    let u2 = updater(&hub, "shop-1", dir.path()).await;
    let e = err(u2.apply(&bundle(a(1, 15, d1), &hub.root), now).await);
    assert!(e.contains("replayed"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_signed_assignment_is_refused_once_the_delegation_expired() {
    let hub = Hub::start().await;
    hub.push_mlp("demand", 1, 1).await;
    hub.assign("shop-1", "demand", 1).await;
    let dir = tempfile::tempdir().expect("tmp");
    let u = updater(&hub, "shop-1", dir.path()).await;
    let bundle = match u.hub.poll(now(), 0).await.expect("poll") {
        edgefleet_agent::hub_client::Poll::Changed(b) => b,
        edgefleet_agent::hub_client::Poll::Unchanged => panic!("first poll must return the bundle"),
    };
    assert_eq!(bundle.assignments.len(), 1);
    // The delegation in the test hub lasts one day: two days on, it has expired.
    let later = now() + 2 * 86400;
    let e = u
        .apply(&bundle, later)
        .await
        .expect_err("expired delegation")
        .to_string();
    assert!(e.contains("delegation expired"), "{e}");
    u.apply(&bundle, now()).await.expect("valid now");
}

/// Serves `u`'s models on 127.0.0.1:0 with `u`'s stale-assignment count, as the agent does;
/// returns the `/metrics` URL.
async fn metrics_url(u: &Updater) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/metrics", listener.local_addr().expect("addr"));
    let router = edgefleet_agent::serve::router(
        u.models.clone(),
        edgefleet_agent::serve::Metrics {
            stale_assignments: Some(u.stale_assignments.clone()),
            ..Default::default()
        },
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    url
}

/// `edgefleet_agent_stale_assignments_total` as `/metrics` reports it.
async fn stale_metric(http: &reqwest::Client, url: &str) -> u64 {
    let text = http
        .get(url)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix("edgefleet_agent_stale_assignments_total "))
        .unwrap_or_else(|| panic!("no stale-assignment counter in {text}"))
        .parse()
        .expect("a count")
}

/// The HTTP long-poll and the retained MQTT bundle race: an older assignment for the version
/// the device already serves may arrive after a newer one. That is ignored and counted, not
/// reported as the device's error. A lower serial for a version the device does not serve is
/// still a replay: refused and reported.
#[tokio::test(flavor = "multi_thread")]
async fn an_older_bundle_for_the_served_version_is_ignored_and_a_replay_is_still_reported() {
    let (hub, _dir, u, d1, d2) = demand_v1_v2().await;
    let now = now();
    let a = |version: u64, serial: u64, digest: Digest| assign_demand(version, serial, digest, now);
    let stale = |u: &Updater| {
        u.stale_assignments
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // The updater's models and count behind the agent's HTTP server, as the agent wires them:
    // the count must reach `/metrics`.
    let metrics = metrics_url(&u).await;
    let http = client();
    assert_eq!(stale_metric(&http, &metrics).await, 0);

    // In order: the older serial first, then the newer one for the same version.
    u.apply_pushed(&bundle(a(1, 10, d1), &hub.root), now)
        .await
        .expect("v1, serial 10");
    u.apply_pushed(&bundle(a(1, 11, d1), &hub.root), now)
        .await
        .expect("v1, serial 11");
    assert_eq!(stale(&u), 0);
    assert_eq!(u.trust.lock().await.serials["demand"], 11);

    // Out of order: serial 10 arrives again after 11.
    u.apply_pushed(&bundle(a(1, 10, d1), &hub.root), now)
        .await
        .expect("an older bundle for the served version is not an error");
    assert_eq!(stale(&u), 1, "counted");
    assert_eq!(
        stale_metric(&http, &metrics).await,
        1,
        "counted on /metrics"
    );
    assert_eq!(*u.last_error.lock().await, None);
    assert_eq!(u.trust.lock().await.serials["demand"], 11, "serial kept");
    assert_eq!(
        u.models
            .get("demand")
            .expect("served")
            .model
            .manifest
            .version,
        1
    );
    // The hub's view of the device (each apply_pushed reports its status): healthy, on v1.
    let shop = eventually("shop-1's report of v1", || async {
        let d = hub.try_device("shop-1").await?;
        when(d["status"]["active"][0]["version"] == 1, d)
    })
    .await;
    assert_eq!(
        shop["status"]["last_error"],
        serde_json::Value::Null,
        "{shop}"
    );

    // A lower serial naming a version the device does not serve: a replay, refused, reported.
    let e = u
        .apply_pushed(&bundle(a(2, 9, d2), &hub.root), now)
        .await
        .expect_err("a replay")
        .to_string();
    assert!(e.contains("replayed"), "{e}");
    assert_eq!(stale(&u), 1, "a replay is not counted as stale");
    assert_eq!(stale_metric(&http, &metrics).await, 1);
    assert!(
        u.last_error
            .lock()
            .await
            .as_deref()
            .is_some_and(|e| e.contains("replayed"))
    );
    hub.wait_error("shop-1", "replayed").await;
    assert_eq!(
        u.models
            .get("demand")
            .expect("served")
            .model
            .manifest
            .version,
        1,
        "still serving v1"
    );
}

/// The agent removes a model only on the hub's signed assigned set: a bundle that merely
/// leaves it out (anyone on the broker can publish one), a set signed by another key, or an
/// older set removes nothing; the root-signed set without the model starts the grace period.
#[tokio::test(flavor = "multi_thread")]
async fn only_a_signed_assigned_set_removes_a_model() {
    use edgefleet_common::device::AssignedSet;
    let (hub, dir, u, d1, _) = demand_v1_v2().await;
    let now = now();
    u.apply(&bundle(assign_demand(1, 10, d1, now), &hub.root), now)
        .await
        .expect("v1");
    let set = |models: Vec<String>, serial: u64, key: &SecretKey| AssignmentBundle {
        assigned: Some(
            Signed::sign(
                &AssignedSet {
                    device: "shop-1".into(),
                    models,
                    serial,
                    issued_at: now,
                    expires_at: now + 3600,
                },
                key,
                None,
            )
            .expect("sign"),
        ),
        ..Default::default()
    };
    // An empty, unsigned bundle: nothing.
    u.apply(&AssignmentBundle::default(), now)
        .await
        .expect("an empty bundle is no error");
    assert!(u.unassigned().await.is_empty());
    // A set signed by a stranger: refused, nothing.
    let stranger = SecretKey::generate().expect("key");
    u.apply(&set(vec![], 50, &stranger), now)
        .await
        .expect("a refused set is no update error");
    assert!(u.unassigned().await.is_empty());
    // The root's set naming the model: nothing; then one without it: marked.
    u.apply(&set(vec!["demand".into()], 60, &hub.root), now)
        .await
        .expect("set");
    assert!(u.unassigned().await.is_empty());
    u.apply(&set(vec![], 70, &hub.root), now)
        .await
        .expect("set");
    assert!(u.unassigned().await.contains_key("demand"));
    // An older set naming it again (a replayed retained message) does not cancel that.
    u.apply(&set(vec!["demand".into()], 65, &hub.root), now)
        .await
        .expect("old set");
    assert!(u.unassigned().await.contains_key("demand"));
    // Within the grace period nothing goes; after it, the model stops and leaves the disk.
    assert!(!u.remove_unassigned(now + 10).await);
    assert!(u.models.get("demand").is_some());
    assert!(u.remove_unassigned(now + 601).await);
    assert!(u.models.get("demand").is_none());
    assert!(!dir.path().join("models").join("demand").exists());
    assert!(u.layout.load_active().expect("active").models.is_empty());
}
