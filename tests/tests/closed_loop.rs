//! The closed loop through real components: a hub with its embedded broker and the real
//! `edgefleet-train`, a real agent serving the food-demand model and capturing samples of its
//! ground truth after fuel prices jumped; the devices' sketches drift from v1's training
//! reference, the hub retrains by itself, the candidate beats the champion on rows the trainer
//! never saw, is signed by the hub and published as v2, reproduces byte for byte, shows its
//! lineage, and once an admin approves it is rolled out to the agent, which then predicts the
//! new demand better than v1 did.

mod support;

use std::process::Command;

use edgefleet_common::{DataType, TensorSpec};
use edgefleet_tests::demand::{FEATURES, FUEL_AFTER, Shop, demand_csv, parent, schema};
use edgefleet_trainer::{Dataset, Params, ParentManifest};
use serde_json::{Value, json};
use support::{Agent, Hub, Seen, bin, client, eventually, free_addr, when};

/// Rows a request carries.
const BATCH: usize = 50;

/// The champion: a boosted-tree model of the days before the shock (fuel 1.4–1.8), which
/// knows nothing of fuel at 2.2–2.6.
fn champion() -> Vec<u8> {
    let csv = demand_csv(2_000, 1);
    let sig = ParentManifest::parse(parent().to_string().as_bytes())
        .and_then(|p| p.signature())
        .expect("signature");
    let data = Dataset::read(csv.as_bytes(), schema().to_string().as_bytes(), &sig, None)
        .expect("dataset");
    let params: Params = serde_json::from_value(
        json!({"model": "gbt", "seed": 1, "iterations": 60, "max_depth": 4}),
    )
    .expect("params");
    edgefleet_trainer::train(&data, &params, &sig)
        .expect("train")
        .onnx
}

fn spec(name: &str, shape: Vec<i64>, names: &[&str]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype: DataType::Fp32,
        shape,
        feature_names: names.iter().map(|s| s.to_string()).collect(),
    }
}

/// The agent's answer to `rows` (with request id `id`): the version and one demand per row.
async fn predict(
    http: &reqwest::Client,
    agent: &str,
    rows: &[[f32; 7]],
    id: &str,
) -> (u64, Vec<f64>) {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    let body = json!({"id": id, "inputs": [{"name": "x", "shape": [rows.len(), 7], "datatype": "FP32", "data": data}]});
    let r = http
        .post(format!("{agent}/v2/models/demand/infer"))
        .json(&body)
        .send()
        .await
        .expect("infer");
    let status = r.status();
    let v: Value = r.json().await.expect("json");
    assert!(status.is_success(), "infer: {status} {v}");
    let version = v["model_version"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("version");
    let y = v["outputs"][0]["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    (version, y)
}

fn mae(predicted: &[f64], truth: &[f64]) -> f64 {
    predicted
        .iter()
        .zip(truth)
        .map(|(p, t)| (p - t).abs())
        .sum::<f64>()
        / truth.len() as f64
}

async fn hub_json(http: &reqwest::Client, hub: &Hub, path: &str) -> Result<Value, Seen> {
    http.get(hub.api(path))
        .bearer_auth(&hub.token)
        .send()
        .await
        .map_err(|e| Seen(json!(e.to_string())))?
        .json()
        .await
        .map_err(|e| Seen(json!(e.to_string())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drifted_ground_truth_retrains_a_better_model_that_is_signed_reproduced_and_rolled_out() {
    let trainer = bin("edgefleet-train").display().to_string();
    let hub = Hub::start_with(|c| {
        c.mqtt_enabled = true;
        c.mqtt_listen = free_addr();
        c.trainer_command = vec![trainer.clone()];
    })
    .await;
    let artifact = champion();
    let mut v1 = edgefleet_tests::plain_manifest(
        "demand",
        &artifact,
        vec![spec("x", vec![-1, 7], &FEATURES)],
        vec![spec("y", vec![-1, 1], &[])],
    );
    v1.description = "trained before the fuel shock".into();
    // Its reference: the training days profiled as the devices profile them.
    let data = tempfile::tempdir().expect("tmp");
    let (csv, cols) = (data.path().join("train.csv"), data.path().join("cols.json"));
    std::fs::write(&csv, demand_csv(2_000, 1)).expect("write");
    std::fs::write(
        &cols,
        json!(
            FEATURES
                .iter()
                .map(|f| json!({"name": f}))
                .collect::<Vec<_>>()
        )
        .to_string(),
    )
    .expect("write");
    let reference = edgefleet_hub::reference::profile_csv(
        &csv,
        Some(&cols),
        edgefleet_common::sketch::DEFAULT_K,
    )
    .expect("profile");
    v1.reference_profile = Some(reference.to_bytes());
    hub.push(&v1, &artifact).await;
    hub.assign("shop-1", "demand", 1).await;
    let http = client();
    let on = http
        .put(hub.api("models/demand/capture"))
        .bearer_auth(&hub.token)
        .json(&json!({"rate": 1.0, "max_rows": 1000}))
        .send()
        .await
        .expect("capture on");
    assert_eq!(on.status(), 200);
    let agent = Agent::start_with(&hub, "shop-1", tempfile::tempdir().expect("tmp"), |c| {
        c.telemetry_window_secs = 2;
        c.heartbeat_secs = 1;
        c.telemetry_resend_secs = 2;
    })
    .await;
    eventually("v1 served", || async {
        match http
            .get(format!("{}/v2/models/demand/ready", agent.url))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(r.status().to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    eventually("capture in force on the device", || async {
        let text = http
            .get(format!("{}/metrics", agent.url))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        if text.contains("edgefleet_agent_capture_models 1") {
            Ok(())
        } else {
            Err("capture not yet in force".to_owned())
        }
    })
    .await;

    // After the shock: 400 days of traffic, each batch's true demand reported later.
    let mut shop = Shop::new(7, FUEL_AFTER);
    for b in 0..8 {
        let days: Vec<_> = (0..BATCH).map(|_| shop.day()).collect();
        let rows: Vec<[f32; 7]> = days.iter().map(|d| d.0).collect();
        let (version, _) = predict(&http, &agent.url, &rows, &format!("b{b}")).await;
        assert_eq!(version, 1);
        let truth: Vec<Vec<f64>> = days.iter().map(|d| vec![d.1]).collect();
        let r = http
            .post(format!("{}/v2/models/demand/feedback", agent.url))
            .json(&json!({"feedback": [{"id": format!("b{b}"), "truth": truth}]}))
            .send()
            .await
            .expect("feedback");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["matched"], BATCH, "{v}");
    }
    // Fresh days to judge both versions by.
    let mut judge = Shop::new(99, FUEL_AFTER);
    let test: Vec<_> = (0..200).map(|_| judge.day()).collect();
    let test_rows: Vec<[f32; 7]> = test.iter().map(|d| d.0).collect();
    let test_truth: Vec<f64> = test.iter().map(|d| d.1).collect();
    let (_, before) = predict(&http, &agent.url, &test_rows, "judge-v1").await;
    let mae_v1 = mae(&before, &test_truth);
    eventually("the hub holds the captured rows", || async {
        let v = hub_json(&http, &hub, "models/demand/samples").await?;
        when(v["rows"].as_u64() >= Some(400), v)
    })
    .await;

    let dir = tempfile::tempdir().expect("tmp");
    let cli = |args: &[&str]| {
        let out = Command::new(bin("edgefleet"))
            .args(["--hub", &hub.url, "--token", &hub.token])
            .args(args)
            .output()
            .expect("edgefleet");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // The shop keeps selling (no truth for these yet): the devices' windows keep showing the
    // new fuel prices.
    let selling = {
        let (http, url) = (http.clone(), agent.url.clone());
        tokio::spawn(async move {
            let mut shop = Shop::new(11, FUEL_AFTER);
            for i in 0.. {
                let rows: Vec<[f32; 7]> = (0..BATCH).map(|_| shop.day().0).collect();
                predict(&http, &url, &rows, &format!("s{i}")).await;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
    };
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        json!({"params": {"model": "gbt", "iterations": 60, "max_depth": 4}, "seed": 5,
               "min_rows": 200, "retries": 0, "holdout": 0.25,
               "drift": {"features": ["fuel_price"], "min_device_share": 1.0, "windows": 2, "recent_secs": 60}})
        .to_string(),
    )
    .expect("write");
    let (ok, out) = cli(&[
        "retrain",
        "policy",
        "demand",
        "--file",
        policy.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{out}");
    let job = eventually("the job to end", || async {
        let v = hub_json(&http, &hub, "retrain/jobs/1").await?;
        when(
            matches!(
                v["state"].as_str(),
                Some("succeeded" | "rejected" | "failed")
            ),
            v,
        )
    })
    .await;
    selling.abort();
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["trigger"]["kind"], "drift", "{job}");
    assert!(
        job["trigger"]["values"]["scores"]["fuel_price"].as_f64() > Some(0.0),
        "{job}"
    );
    assert_eq!(
        (job["version"].as_u64(), job["awaiting_approval"].as_bool()),
        (Some(2), Some(true)),
        "{job}"
    );
    let run_id = job["runs"][0].as_u64().expect("run");
    let run = hub_json(&http, &hub, &format!("retrain/runs/{run_id}"))
        .await
        .expect("run");
    let gate = &run["gate"];
    assert_eq!(gate["wins"], true, "{run}");
    assert_eq!(gate["rows"], 100, "a quarter of 400 rows held out: {gate}");
    eprintln!("gate: {gate}; v1 on fresh days: MAE {mae_v1:.2}");

    // The run again, on its kept rows: the same bytes.
    let (ok, out) = cli(&["retrain", "reproduce", &run_id.to_string()]);
    assert!(ok && out.contains("the same model bytes"), "{out}");
    // The lineage: the trigger, the run, the gate, then v1.
    let (ok, out) = cli(&["lineage", "demand", "2"]);
    assert!(ok, "{out}");
    for needle in [
        "demand v2",
        "trigger   drift",
        "on fuel_price",
        "gate      MAE",
        "↑ parent v1",
        "demand v1",
    ] {
        assert!(out.contains(needle), "{needle:?} in {out}");
    }

    // Approved, it is rolled out (one wave, no bake) and the agent serves it.
    let rollout = dir.path().join("rollout.json");
    std::fs::write(
        &rollout,
        json!({"waves": [{"percent": 100.0}], "bake_secs": 0}).to_string(),
    )
    .expect("write");
    let (ok, out) = cli(&[
        "approve-model",
        "demand",
        "2",
        "--rollout",
        rollout.to_str().expect("utf-8"),
    ]);
    assert!(ok && out.contains("approved: rollout"), "{out}");
    let after = eventually("the agent serving v2", || async {
        let (v, y) = predict(&http, &agent.url, &test_rows, "judge-v2").await;
        if v == 2 { Ok(y) } else { Err(format!("v{v}")) }
    })
    .await;
    let mae_v2 = mae(&after, &test_truth);
    eprintln!("fresh days after the shock: v1 MAE {mae_v1:.2}, v2 MAE {mae_v2:.2}");
    assert!(mae_v2 < 0.7 * mae_v1, "v1 {mae_v1}, v2 {mae_v2}");
    let (ok, out) = cli(&["lineage", "demand", "2"]);
    assert!(ok && out.contains("rollout   1"), "{out}");
}
