//! The hub refuses what it must not store or distribute, each with a clear 4xx.

mod support;

use edgefleet_common::trust::{Delegation, Permission};
use edgefleet_common::{SecretKey, Signed};
use edgefleet_tests::Mlp;
use support::*;

async fn error_of(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.expect("errors are JSON");
    (
        status,
        v["error"].as_str().expect("error message").to_owned(),
    )
}

fn delegation(
    hub: &Hub,
    key: &SecretKey,
    patterns: &[&str],
    issued_at: u64,
    expires_at: u64,
) -> Signed<Delegation> {
    let d = Delegation {
        key: key.public(),
        label: "scientist".into(),
        patterns: patterns.iter().map(|s| s.to_string()).collect(),
        permissions: vec![Permission::Manifests],
        issued_at,
        expires_at,
    };
    Signed::sign(&d, &hub.root, None).expect("sign")
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_uploads_are_verified() {
    let hub = Hub::start().await;
    let mlp = Mlp::new(1);
    let artifact = mlp.to_onnx();
    assert_eq!(hub.put_blob(&artifact).await.status(), 201);
    let m = hub.manifest("demand", 1, &mlp, &artifact);

    // Unsigned / garbage body.
    let r = hub
        .http
        .post(hub.api("models"))
        .bearer_auth(&hub.token)
        .body("not a manifest")
        .send()
        .await
        .expect("post");
    let (s, e) = error_of(r).await;
    assert_eq!(s, 400, "{e}");
    assert!(e.contains("malformed"), "{e}");

    // Signed by a key the root never delegated to.
    let stranger = SecretKey::generate().expect("key");
    let (s, e) = error_of(
        hub.post_manifest(&Signed::sign(&m, &stranger, None).expect("sign"))
            .await,
    )
    .await;
    assert_eq!(s, 403);
    assert!(e.contains("not trusted"), "{e}");

    // A delegation that has expired, one not yet valid, and one for other models.
    let scientist = SecretKey::generate().expect("key");
    let expired = delegation(&hub, &scientist, &["*"], now() - 100, now() - 10);
    let (s, e) = error_of(
        hub.post_manifest(&Signed::sign(&m, &scientist, Some(expired)).expect("sign"))
            .await,
    )
    .await;
    assert_eq!(s, 403);
    assert!(e.contains("expired"), "{e}");
    let future = delegation(&hub, &scientist, &["*"], now() + 1000, now() + 2000);
    let (s, e) = error_of(
        hub.post_manifest(&Signed::sign(&m, &scientist, Some(future)).expect("sign"))
            .await,
    )
    .await;
    assert_eq!(s, 403);
    assert!(e.contains("not valid before"), "{e}");
    let fraud_only = delegation(&hub, &scientist, &["fraud-*"], now() - 10, now() + 1000);
    let (s, e) = error_of(
        hub.post_manifest(&Signed::sign(&m, &scientist, Some(fraud_only)).expect("sign"))
            .await,
    )
    .await;
    assert_eq!(s, 403);
    assert!(e.contains("does not cover"), "{e}");

    // A tampered signed body.
    let mut tampered = Signed::sign(&m, &hub.root, None).expect("sign");
    let n = tampered.body.len();
    tampered.body[n - 1] ^= 0x01;
    let (s, e) = error_of(hub.post_manifest(&tampered).await).await;
    assert_eq!(s, 403);
    assert!(e.contains("bad signature"), "{e}");

    // A correctly delegated key works; the same version twice does not.
    let ok = delegation(&hub, &scientist, &["demand*"], now() - 10, now() + 1000);
    let r = hub
        .post_manifest(&Signed::sign(&m, &scientist, Some(ok)).expect("sign"))
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let (s, e) = error_of(
        hub.post_manifest(&Signed::sign(&m, &hub.root, None).expect("sign"))
            .await,
    )
    .await;
    assert_eq!(s, 409);
    assert!(e.contains("strictly increase"), "{e}");

    // No admin token.
    let r = hub
        .http
        .post(hub.api("models"))
        .body(
            Signed::sign(&m, &hub.root, None)
                .expect("s")
                .to_bytes()
                .expect("b"),
        )
        .send()
        .await
        .expect("post");
    assert_eq!(error_of(r).await.0, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn artifacts_must_match_their_hash_and_size() {
    let hub = Hub::start_with(|c| c.max_artifact_bytes = 4096).await;
    let mlp = Mlp::new(1);
    let artifact = mlp.to_onnx();

    // Body that does not hash to the URL's digest (a tampered artifact).
    let mut tampered = artifact.clone();
    tampered[10] ^= 0xff;
    let sha = edgefleet_common::Digest::of(&artifact);
    let r = hub
        .http
        .put(hub.api(&format!("blobs/{sha}")))
        .bearer_auth(&hub.token)
        .body(tampered)
        .send()
        .await
        .expect("put");
    let (s, e) = error_of(r).await;
    assert_eq!(s, 400);
    assert!(e.contains("hash mismatch"), "{e}");

    // A manifest whose artifact was never uploaded.
    let m = hub.manifest("demand", 1, &mlp, &artifact);
    let (s, e) = error_of(
        hub.post_manifest(&Signed::sign(&m, &hub.root, None).expect("sign"))
            .await,
    )
    .await;
    assert_eq!(s, 409);
    assert!(e.contains("not uploaded"), "{e}");

    // Oversize artifact.
    let big = vec![7u8; 10_000];
    let big_sha = edgefleet_common::Digest::of(&big);
    let r = hub
        .http
        .put(hub.api(&format!("blobs/{big_sha}")))
        .bearer_auth(&hub.token)
        .body(big)
        .send()
        .await
        .expect("put");
    assert_eq!(error_of(r).await.0, 413);

    // Size in the manifest differs from the uploaded blob.
    assert_eq!(hub.put_blob(&artifact).await.status(), 201);
    let mut wrong = m.clone();
    wrong.artifact.size += 1;
    let (s, e) = error_of(
        hub.post_manifest(&Signed::sign(&wrong, &hub.root, None).expect("sign"))
            .await,
    )
    .await;
    assert_eq!(s, 400);
    assert!(e.contains("bytes"), "{e}");

    // Malformed digest in the URL.
    let r = hub
        .http
        .put(hub.api("blobs/xyz"))
        .bearer_auth(&hub.token)
        .body("x")
        .send()
        .await
        .expect("put");
    assert_eq!(error_of(r).await.0, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn path_traversal_in_names_is_refused() {
    let hub = Hub::start().await;
    let mlp = Mlp::new(1);
    let artifact = mlp.to_onnx();
    assert_eq!(hub.put_blob(&artifact).await.status(), 201);
    for bad in ["../etc", "a/b", "..", "/abs", "Demand", "a%2fb"] {
        let m = hub.manifest(bad, 1, &mlp, &artifact);
        let (s, e) = error_of(
            hub.post_manifest(&Signed::sign(&m, &hub.root, None).expect("sign"))
                .await,
        )
        .await;
        assert_eq!(s, 400, "{bad}: {e}");
        assert!(e.contains("invalid name"), "{bad}: {e}");
    }
    for path in [
        "models/..%2f..%2fetc/versions/1/manifest",
        "models/a%2fb",
        "devices/..%2fx",
    ] {
        let r = hub
            .http
            .get(hub.api(path))
            .bearer_auth(&hub.token)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 400, "{path}");
    }
    let r = hub
        .http
        .post(hub.api("assignments"))
        .bearer_auth(&hub.token)
        .json(&serde_json::json!({"target": {"device": "../x"}, "model": "demand", "version": 1}))
        .send()
        .await
        .expect("assign");
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn artifact_download_supports_range_and_etag() {
    let hub = Hub::start().await;
    let (_, artifact) = hub.push_mlp("demand", 1, 1).await;
    let url = hub.api("models/demand/versions/1/artifact");
    let full = hub
        .http
        .get(&url)
        .bearer_auth(&hub.token)
        .send()
        .await
        .expect("get");
    assert_eq!(full.status(), 200);
    let etag = full.headers()["etag"].to_str().expect("etag").to_owned();
    assert_eq!(full.bytes().await.expect("body").as_ref(), &artifact[..]);
    let part = hub
        .http
        .get(&url)
        .bearer_auth(&hub.token)
        .header("range", "bytes=100-")
        .header("if-range", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.expect("body").as_ref(), &artifact[100..]);
    let stale = hub
        .http
        .get(&url)
        .bearer_auth(&hub.token)
        .header("range", "bytes=100-")
        .header("if-range", "\"other\"")
        .send()
        .await
        .expect("get");
    assert_eq!(
        stale.status(),
        200,
        "a stale If-Range gets the whole artifact"
    );
    let nm = hub
        .http
        .get(&url)
        .bearer_auth(&hub.token)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(nm.status(), 304);
    let bad = hub
        .http
        .get(&url)
        .bearer_auth(&hub.token)
        .header("range", format!("bytes={}-", artifact.len()))
        .send()
        .await
        .expect("get");
    assert_eq!(bad.status(), 416);
    let anon = hub.http.get(&url).send().await.expect("get");
    assert_eq!(
        anon.status(),
        401,
        "artifacts need an admin or device session"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn enrollment_needs_a_token_or_approval_and_proof_of_key() {
    let hub = Hub::start().await;
    let key = SecretKey::generate().expect("key");
    let req = |token: Option<&str>, id: &str| edgefleet_common::device::EnrollRequest {
        device_id: id.into(),
        public_key: key.public(),
        tags: vec![],
        hostname: "h".into(),
        agent_version: "t".into(),
        enrollment_token: token.map(str::to_owned),
        requested_at: now(),
    };
    let post = |body: Vec<u8>| hub.http.post(hub.api("enroll")).body(body).send();
    // Wrong token: refused. No token: pending until approved.
    let r = post(
        Signed::sign(&req(Some("wrong-token-xxxxxxxx"), "d1"), &key, None)
            .expect("s")
            .to_bytes()
            .expect("b"),
    )
    .await
    .expect("post");
    assert_eq!(r.status(), 403);
    let r = post(
        Signed::sign(&req(None, "d1"), &key, None)
            .expect("s")
            .to_bytes()
            .expect("b"),
    )
    .await
    .expect("post");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["approved"], false);
    let r = hub
        .http
        .post(hub.api("device/challenge"))
        .json(&serde_json::json!({"device_id": "d1"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403, "pending devices get no session");
    let r = hub
        .http
        .post(hub.api("devices/d1/approve"))
        .bearer_auth(&hub.token)
        .send()
        .await
        .expect("approve");
    assert_eq!(r.status(), 200);
    let r = hub
        .http
        .post(hub.api("device/challenge"))
        .json(&serde_json::json!({"device_id": "d1"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    // Signed by another key than the one it enrolls: refused.
    let other = SecretKey::generate().expect("key");
    let r = post(
        Signed::sign(&req(None, "d2"), &other, None)
            .expect("s")
            .to_bytes()
            .expect("b"),
    )
    .await
    .expect("post");
    assert_eq!(r.status(), 403);
    // Another key for an enrolled id: conflict.
    let mut stolen = req(None, "d1");
    stolen.public_key = other.public();
    let r = post(
        Signed::sign(&stolen, &other, None)
            .expect("s")
            .to_bytes()
            .expect("b"),
    )
    .await
    .expect("post");
    assert_eq!(r.status(), 409);
    // Garbage.
    let r = post(b"garbage".to_vec()).await.expect("post");
    assert_eq!(r.status(), 400);
}
