//! The Open Inference Protocol v2 surface: metadata, health, datatypes, and bad requests.

mod support;

use edgefleet_common::{ArtifactRef, DataType, ModelManifest, TensorSpec, manifest::ModelFormat};
use serde_json::{Value, json};
use support::*;

fn spec(name: &str, dt: DataType, cols: i64) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype: dt,
        shape: vec![-1, cols],
        feature_names: vec![],
    }
}

async fn setup() -> (Hub, Agent) {
    let hub = Hub::start().await;
    hub.push_mlp("demand", 1, 1).await;
    let typed = edgefleet_tests::onnx::typed();
    let m = ModelManifest {
        name: "typed".into(),
        version: 1,
        artifact: ArtifactRef {
            sha256: edgefleet_common::Digest::of(&typed),
            size: typed.len() as u64,
            format: ModelFormat::Onnx,
        },
        inputs: vec![
            spec("a", DataType::Fp64, 2),
            spec("b", DataType::Int64, 2),
            spec("c", DataType::Int32, 1),
            spec("d", DataType::Bool, 1),
        ],
        outputs: vec![
            spec("a2", DataType::Fp64, 2),
            spec("b1", DataType::Int64, 2),
            spec("c1", DataType::Int32, 1),
            spec("dn", DataType::Bool, 1),
        ],
        smoke_tests: vec![],
        created_at: now(),
        lineage: Default::default(),
        reference_profile: None,
        description: String::new(),
    };
    hub.push(&m, &typed).await;
    hub.assign("shop-1", "demand", 1).await;
    hub.assign("shop-1", "typed", 1).await;
    let agent = Agent::start(&hub, "shop-1").await;
    let http = reqwest::Client::new();
    eventually("both models", || async {
        let a = http
            .get(format!("{}/v2/models/demand/ready", agent.url))
            .send()
            .await
            .ok()?;
        let b = http
            .get(format!("{}/v2/models/typed/ready", agent.url))
            .send()
            .await
            .ok()?;
        (a.status() == 200 && b.status() == 200).then_some(())
    })
    .await;
    (hub, agent)
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_health_and_every_datatype() {
    let (_hub, agent) = setup().await;
    let http = reqwest::Client::new();
    let get = |p: &str| http.get(format!("{}{p}", agent.url)).send();
    assert_eq!(get("/v2/health/live").await.expect("live").status(), 200);
    assert_eq!(get("/v2/health/ready").await.expect("ready").status(), 200);
    let server: Value = get("/v2").await.expect("v2").json().await.expect("json");
    assert_eq!(server["name"], "edgefleet-agent");
    assert!(server["extensions"].is_array());
    let meta: Value = get("/v2/models/demand")
        .await
        .expect("meta")
        .json()
        .await
        .expect("json");
    assert_eq!(
        meta,
        json!({
            "name": "demand", "versions": ["1"], "platform": "onnx",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
        })
    );
    assert_eq!(
        get("/v2/models/demand/versions/1")
            .await
            .expect("v")
            .status(),
        200
    );
    assert_eq!(
        get("/v2/models/demand/versions/1/ready")
            .await
            .expect("v")
            .status(),
        200
    );
    assert_eq!(
        get("/v2/models/demand/versions/7/ready")
            .await
            .expect("v")
            .status(),
        404
    );

    let body = json!({
        "id": "abc",
        "inputs": [
            {"name": "a", "shape": [2, 2], "datatype": "FP64", "data": [[1.5, -2.0], [0.25, 1e300]]},
            {"name": "b", "shape": [2, 2], "datatype": "INT64", "data": [1, -5, 9007199254740993i64, 0]},
            {"name": "c", "shape": [2, 1], "datatype": "INT32", "data": [7, -8]},
            {"name": "d", "shape": [2, 1], "datatype": "BOOL", "data": [true, false]}
        ],
        "outputs": [{"name": "a2"}, {"name": "b1"}, {"name": "c1"}, {"name": "dn"}]
    });
    let r = http
        .post(format!("{}/v2/models/typed/versions/1/infer", agent.url))
        .json(&body)
        .send()
        .await
        .expect("infer");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["id"], "abc");
    assert_eq!(v["model_name"], "typed");
    assert_eq!(v["model_version"], "1");
    let out = |n: &str| {
        v["outputs"]
            .as_array()
            .expect("outputs")
            .iter()
            .find(|o| o["name"] == n)
            .cloned()
            .expect(n)
    };
    assert_eq!(
        out("a2"),
        json!({"name": "a2", "datatype": "FP64", "shape": [2, 2], "data": [3.0, -4.0, 0.5, 2e300]})
    );
    assert_eq!(
        out("b1"),
        json!({"name": "b1", "datatype": "INT64", "shape": [2, 2], "data": [2, -4, 9007199254740994i64, 1]})
    );
    assert_eq!(
        out("c1"),
        json!({"name": "c1", "datatype": "INT32", "shape": [2, 1], "data": [7, -8]})
    );
    assert_eq!(
        out("dn"),
        json!({"name": "dn", "datatype": "BOOL", "shape": [2, 1], "data": [false, true]})
    );

    // Output selection.
    let mut only = body.clone();
    only["outputs"] = json!([{"name": "dn"}]);
    let v: Value = http
        .post(format!("{}/v2/models/typed/infer", agent.url))
        .json(&only)
        .send()
        .await
        .expect("infer")
        .json()
        .await
        .expect("json");
    assert_eq!(v["outputs"].as_array().expect("outputs").len(), 1);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_a_4xx_that_says_what_was_expected() {
    let (_hub, agent) = setup().await;
    let http = reqwest::Client::new();
    let x = |shape: Value, dt: &str, data: Value| json!({"inputs": [{"name": "x", "shape": shape, "datatype": dt, "data": data}]});
    let ok_row = json!([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("demand", b"{not json".to_vec(), 400, "malformed"),
        ("demand", b"[]".to_vec(), 400, "malformed"),
        ("demand", json!({"inputs": "x"}).to_string().into_bytes(), 400, "malformed"),
        ("nosuch", x(json!([1, 8]), "FP32", ok_row.clone()).to_string().into_bytes(), 404, "not loaded"),
        ("demand", x(json!([1, 7]), "FP32", json!([1, 2, 3, 4, 5, 6, 7])).to_string().into_bytes(), 400, "shape [-1, 8]"),
        ("demand", x(json!([1, 8]), "FP64", ok_row.clone()).to_string().into_bytes(), 400, "must be FP32"),
        ("demand", x(json!([1, 8]), "FLOAT", ok_row.clone()).to_string().into_bytes(), 400, "unknown datatype"),
        ("demand", x(json!([2, 8]), "FP32", ok_row.clone()).to_string().into_bytes(), 400, "needs 16 elements"),
        ("demand", x(json!([1, 8]), "FP32", json!([0, 1, 2, "x", 4, 5, 6, 7])).to_string().into_bytes(), 400, "not a valid FP32"),
        ("demand", x(json!([-1, 8]), "FP32", ok_row.clone()).to_string().into_bytes(), 400, "negative"),
        ("demand", x(json!([0, 8]), "FP32", json!([])).to_string().into_bytes(), 400, "shape"),
        ("demand", json!({"inputs": []}).to_string().into_bytes(), 400, "missing input \"x\""),
        ("demand", json!({"inputs": [{"name": "z", "shape": [1], "datatype": "FP32", "data": [1]}, {"name": "x", "shape": [1, 8], "datatype": "FP32", "data": ok_row}]}).to_string().into_bytes(), 400, "unknown input"),
        ("demand", json!({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": ok_row}], "outputs": [{"name": "nope"}]}).to_string().into_bytes(), 400, "unknown output"),
        ("demand", x(json!([1, 8]), "INT32", json!([0, 1, 2, 3, 4, 5, 6, 9999999999i64])).to_string().into_bytes(), 400, "not a valid INT32"),
    ];
    for (model, body, status, needle) in cases {
        let r = http
            .post(format!("{}/v2/models/{model}/infer", agent.url))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("infer");
        let got = r.status().as_u16();
        let v: Value = r.json().await.expect("error body is JSON");
        let msg = v["error"].as_str().unwrap_or_default();
        assert_eq!(got, status, "{}: {msg}", String::from_utf8_lossy(&body));
        assert!(
            msg.contains(needle),
            "{}: {msg:?} should contain {needle:?}",
            String::from_utf8_lossy(&body)
        );
    }
    // A version that is not loaded, an oversized body, a huge element count.
    let r = http
        .post(format!("{}/v2/models/demand/versions/9/infer", agent.url))
        .json(&x(json!([1, 8]), "FP32", ok_row.clone()))
        .send()
        .await
        .expect("infer");
    assert_eq!(r.status(), 404);
    let big = vec![b' '; 9 * 1024 * 1024];
    let r = http
        .post(format!("{}/v2/models/demand/infer", agent.url))
        .body(big)
        .send()
        .await
        .expect("infer");
    assert_eq!(r.status(), 413);
    let many = format!(
        "{{\"inputs\":[{{\"name\":\"x\",\"shape\":[1,8],\"datatype\":\"FP32\",\"data\":[{}0]}}]}}",
        "0,".repeat(1_100_000)
    );
    // A new client: the server may close the connection it answered 413 on while the client
    // still sends, and a pooled client would try to reuse it.
    let r = reqwest::Client::new()
        .post(format!("{}/v2/models/demand/infer", agent.url))
        .body(many)
        .send()
        .await
        .expect("infer");
    assert_eq!(r.status(), 400);
    // Still healthy afterwards.
    assert!(
        infer_ok(
            &reqwest::Client::new(),
            &agent.url,
            "demand",
            &edgefleet_tests::probe_rows(1, 1)
        )
        .await
        .is_some()
    );
    agent.stop().await;
}
