//! The Open Inference Protocol v2 surface: metadata, health, datatypes, and bad requests.

mod support;

use edgefleet_agent::serve::{MAX_ELEMENTS, MAX_INFER_BODY};
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
    let http = client();
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

/// A refused request's status and the protocol's `{"error": …}` message.
async fn refusal(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.expect("error body is JSON");
    (status, v["error"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_health_and_every_datatype() {
    let (_hub, agent) = setup().await;
    let http = client();
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
    let http = client();
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
        ("demand", x(json!([1, 8]), "FP32", json!([0, 1, 2, 3, 4, 5, 6, 1e300])).to_string().into_bytes(), 400, "input \"x\": element 7 (1e+300) is out of range for FP32"),
        ("demand", x(json!([1, 8]), "FP32", json!([[0, 1, 2, 3], [4, 5, 6, -1e39]])).to_string().into_bytes(), 400, "out of range for FP32"),
        // Beyond FP64's range (±1.8e308): JSON has no infinity, so a mistake, named by input.
        ("typed", br#"{"inputs": [{"name": "a", "shape": [1, 2], "datatype": "FP64", "data": [1.5, 1e400]}, {"name": "b", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}, {"name": "c", "shape": [1, 1], "datatype": "INT32", "data": [3]}, {"name": "d", "shape": [1, 1], "datatype": "BOOL", "data": [true]}]}"#.to_vec(), 400, "input \"a\": a number in data is out of range for FP64"),
        ("typed", br#"{"inputs": [{"name": "a", "shape": [1, 2], "datatype": "FP64", "data": [[1.5], [-1e400]]}]}"#.to_vec(), 400, "input \"a\": a number in data is out of range for FP64"),
    ];
    for (model, body, status, needle) in cases {
        let r = http
            .post(format!("{}/v2/models/{model}/infer", agent.url))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("infer");
        let (got, msg) = refusal(r).await;
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
    let r = client()
        .post(format!("{}/v2/models/demand/infer", agent.url))
        .body(many)
        .send()
        .await
        .expect("infer");
    assert_eq!(r.status(), 400);
    // Still healthy afterwards.
    assert!(
        infer_ok(
            &client(),
            &agent.url,
            "demand",
            &edgefleet_tests::probe_rows(1, 1)
        )
        .await
        .is_some()
    );
    agent.stop().await;
}

/// The Binary Tensor Data Extension: every datatype in and out as raw little-endian bytes,
/// mixed with JSON, and the same answers as JSON.
#[tokio::test(flavor = "multi_thread")]
async fn binary_tensor_data_in_and_out() {
    let (_hub, agent) = setup().await;
    let http = client();
    let server: Value = http
        .get(format!("{}/v2", agent.url))
        .send()
        .await
        .expect("v2")
        .json()
        .await
        .expect("json");
    assert_eq!(server["extensions"], json!(["binary_tensor_data"]));

    let a: Vec<u8> = [1.5f64, -2.0, 0.25, 1e300]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let b: Vec<u8> = [1i64, -5, 9007199254740993, 0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let d = [1u8, 0];
    // a, b and d binary (in that order after the JSON), c as JSON; every output binary but c1.
    let header = json!({
        "id": "bin",
        "inputs": [
            {"name": "a", "shape": [2, 2], "datatype": "FP64", "parameters": {"binary_data_size": 32}},
            {"name": "b", "shape": [2, 2], "datatype": "INT64", "parameters": {"binary_data_size": 32}},
            {"name": "c", "shape": [2, 1], "datatype": "INT32", "data": [7, -8]},
            {"name": "d", "shape": [2, 1], "datatype": "BOOL", "parameters": {"binary_data_size": 2}}
        ],
        "parameters": {"binary_data_output": true},
        "outputs": [{"name": "a2"}, {"name": "b1"}, {"name": "c1", "parameters": {"binary_data": false}}, {"name": "dn"}]
    });
    let mut body = serde_json::to_vec(&header).expect("json");
    let json_len = body.len();
    body.extend_from_slice(&a);
    body.extend_from_slice(&b);
    body.extend_from_slice(&d);
    let r = http
        .post(format!("{}/v2/models/typed/infer", agent.url))
        .header("Inference-Header-Content-Length", json_len)
        .header("content-type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .expect("infer");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().expect("ascii"),
        "application/octet-stream"
    );
    let n: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a length");
    let bytes = r.bytes().await.expect("body");
    let v: Value = serde_json::from_slice(&bytes[..n]).expect("JSON header");
    assert_eq!(v["id"], "bin");
    let outs = v["outputs"].as_array().expect("outputs");
    let names: Vec<&str> = outs.iter().filter_map(|o| o["name"].as_str()).collect();
    assert_eq!(names, ["a2", "b1", "c1", "dn"]);
    assert_eq!(outs[0]["parameters"]["binary_data_size"], 32);
    assert_eq!(outs[1]["parameters"]["binary_data_size"], 32);
    assert_eq!(outs[3]["parameters"]["binary_data_size"], 2);
    assert!(outs[0].get("data").is_none());
    assert_eq!(
        outs[2],
        json!({"name": "c1", "datatype": "INT32", "shape": [2, 1], "data": [7, -8]})
    );
    let tail = &bytes[n..];
    assert_eq!(tail.len(), 32 + 32 + 2, "exactly the binary outputs follow");
    let a2: Vec<f64> = tail[..32]
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8")))
        .collect();
    assert_eq!(a2, [3.0, -4.0, 0.5, 2e300]);
    let b1: Vec<i64> = tail[32..64]
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
        .collect();
    assert_eq!(b1, [2, -4, 9007199254740994, 1]);
    assert_eq!(&tail[64..], &[0u8, 1]);

    // Binary in, JSON out: the same answers as an all-JSON request.
    let mut json_out = header.clone();
    json_out["parameters"] = json!({});
    let mut body2 = serde_json::to_vec(&json_out).expect("json");
    let len2 = body2.len();
    body2.extend_from_slice(&a);
    body2.extend_from_slice(&b);
    body2.extend_from_slice(&d);
    let r = http
        .post(format!("{}/v2/models/typed/infer", agent.url))
        .header("Inference-Header-Content-Length", len2)
        .body(body2)
        .send()
        .await
        .expect("infer");
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("inference-header-content-length").is_none());
    let v: Value = r.json().await.expect("json");
    let all_json = json!({
        "id": "bin",
        "inputs": [
            {"name": "a", "shape": [2, 2], "datatype": "FP64", "data": [1.5, -2.0, 0.25, 1e300]},
            {"name": "b", "shape": [2, 2], "datatype": "INT64", "data": [1, -5, 9007199254740993i64, 0]},
            {"name": "c", "shape": [2, 1], "datatype": "INT32", "data": [7, -8]},
            {"name": "d", "shape": [2, 1], "datatype": "BOOL", "data": [true, false]}
        ],
        "outputs": [{"name": "a2"}, {"name": "b1"}, {"name": "c1"}, {"name": "dn"}]
    });
    let w: Value = http
        .post(format!("{}/v2/models/typed/infer", agent.url))
        .json(&all_json)
        .send()
        .await
        .expect("infer")
        .json()
        .await
        .expect("json");
    assert_eq!(v, w);

    // Bad sizes over the wire: each a 400 that names the problem; the agent keeps serving.
    let x8: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let one = |size: u64| {
        serde_json::to_vec(&json!({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "parameters": {"binary_data_size": size}}]})).expect("json")
    };
    let with = |mut json: Vec<u8>, extra: &[u8]| {
        let n = json.len();
        json.extend_from_slice(extra);
        (json, n.to_string())
    };
    let cases: Vec<(Vec<u8>, Option<String>, &str)> = vec![
        {
            let (b, _) = with(one(32), &x8);
            (b, Some("100000".into()), "body has only")
        },
        {
            let (b, n) = with(one(16), &x8);
            (b, Some(n), "needs 8 × 4 = 32 bytes")
        },
        {
            let (b, n) = with(one(32), &x8[..16]);
            (b, Some(n), "only 16 bytes are left")
        },
        {
            let (b, n) = with(one(32), &[x8.as_slice(), &[0u8; 4]].concat());
            (b, Some(n), "must account for every byte")
        },
        {
            let (b, _) = with(one(32), &x8);
            (b, None, "malformed inference request")
        },
        {
            let (b, n) = with(one(32), &x8);
            (b, Some(format!("{n}x")), "Inference-Header-Content-Length")
        },
        // BYTES in binary form (4-byte length prefixes): the models served take numbers.
        {
            let h = serde_json::to_vec(&json!({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]})).expect("json");
            let (b, n) = with(h, b"\x05\x00\x00\x00hello");
            (
                b,
                Some(n),
                "input \"x\": datatype BYTES is not served (BYTES carries strings",
            )
        },
    ];
    for (body, header, needle) in cases {
        let mut req = http
            .post(format!("{}/v2/models/demand/infer", agent.url))
            .body(body);
        if let Some(h) = header {
            req = req.header("Inference-Header-Content-Length", h);
        }
        let (status, msg) = refusal(req.send().await.expect("infer")).await;
        assert_eq!(status, 400, "{needle}: {msg}");
        assert!(msg.contains(needle), "{msg:?} should contain {needle:?}");
    }
    // Over the 8 MiB body cap: input a's shape, datatype and binary_data_size all agree and
    // it holds no more than the element cap, but its bytes and the JSON header exceed 8 MiB.
    let rows = MAX_ELEMENTS / 2;
    let size = rows * 2 * 8;
    let (b, n) = with(
        serde_json::to_vec(&json!({"inputs": [{"name": "a", "shape": [rows, 2], "datatype": "FP64", "parameters": {"binary_data_size": size}}]})).expect("json"),
        &vec![0u8; size],
    );
    assert!(b.len() > MAX_INFER_BODY);
    // A new client: the server may close the connection it answered 413 on.
    let r = client()
        .post(format!("{}/v2/models/typed/infer", agent.url))
        .header("Inference-Header-Content-Length", n)
        .body(b)
        .send()
        .await
        .expect("infer");
    assert_eq!(r.status(), 413);
    let r = http
        .post(format!("{}/v2/models/demand/infer", agent.url))
        .header("content-encoding", "gzip")
        .body(vec![0x1f, 0x8b])
        .send()
        .await
        .expect("infer");
    assert_eq!(r.status(), 415);
    // The demand model through the binary path gives the JSON path's answer.
    let (b, n) = with(one(32), &x8);
    let r = http
        .post(format!("{}/v2/models/demand/infer", agent.url))
        .header("Inference-Header-Content-Length", n)
        .body(b)
        .send()
        .await
        .expect("infer");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    let w: Value = http
        .post(format!("{}/v2/models/demand/infer", agent.url))
        .json(&json!({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0, 1, 2, 3, 4, 5, 6, 7]}]}))
        .send()
        .await
        .expect("infer")
        .json()
        .await
        .expect("json");
    assert_eq!(v, w);
    agent.stop().await;
}
