//! Root rotation, happy path: devices pinned to the first root follow the signed rotation chain
//! the hub hands out, then accept models signed by the new root and refuse the old root's.

mod support;

use edgefleet_common::trust::{Delegation, Permission, RootRotation};
use edgefleet_common::{SecretKey, Signed, armor, encoding};
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn devices_follow_a_root_rotation() {
    let mut hub = Hub::start().await;
    hub.push_mlp("demand", 1, 1).await;
    hub.assign("shop-1", "demand", 1).await;
    let agent = Agent::start(&hub, "shop-1").await;
    let http = client();
    let rows = edgefleet_tests::probe_rows(1, 3);
    eventually("v1", || infer_ok(&http, &agent.url, "demand", &rows)).await;

    // The admin rotates root A → B offline, and B re-delegates to the hub's key.
    let old_root = hub.root.clone();
    let new_root = SecretKey::generate().expect("key");
    let rotation = RootRotation::create(&old_root, &new_root, 2, now()).expect("rotation");
    let chain = hub.dir.path().join("rotations");
    std::fs::write(
        &chain,
        armor::encode(
            "ROOT ROTATION",
            &encoding::to_bytes(&rotation).expect("bytes"),
        ),
    )
    .expect("write");
    let d = Delegation {
        key: hub.hub_key.public(),
        label: "hub".into(),
        patterns: vec!["*".into()],
        permissions: vec![Permission::Manifests, Permission::Assignments],
        issued_at: now() - 60,
        expires_at: now() + 86400,
    };
    let delegation = hub.dir.path().join("hub-b.delegation");
    std::fs::write(
        &delegation,
        armor::encode(
            "DELEGATION",
            &Signed::sign(&d, &new_root, None)
                .expect("sign")
                .to_bytes()
                .expect("b"),
        ),
    )
    .expect("write");
    let mut config = hub.config.clone();
    config.root_rotations = Some(chain);
    config.delegation = delegation;
    hub.restart(config).await;
    hub.root = new_root.clone();

    // The old root can no longer publish; the new one can, and the device follows.
    let mlp = edgefleet_tests::Mlp::new(5);
    let artifact = mlp.to_onnx();
    let m = hub.manifest("demand", 2, &mlp, &artifact);
    assert_eq!(hub.put_blob(&artifact).await.status(), 201);
    let r = hub
        .post_manifest(&Signed::sign(&m, &old_root, None).expect("sign"))
        .await;
    assert_eq!(r.status(), 403, "the rotated-out root is no longer trusted");
    hub.push(&m, &artifact).await;
    hub.assign("shop-1", "demand", 2).await;
    eventually("v2 signed by the new root", || {
        infer_version(&http, &agent.url, "demand", &rows, 2)
    })
    .await;
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent.dir.path().join("state.json")).expect("state"))
            .expect("json");
    assert_eq!(state["root"]["version"], 2);
    assert_eq!(state["root"]["root_key"], new_root.public().to_hex());
    agent.stop().await;
}
