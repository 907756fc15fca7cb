//! Ground truth end to end: real agents (in-process, and the binary for kill -9) serving models
//! a real hub assigned, inference with ids, `POST /v2/models/{name}/feedback`, and the quality
//! read back from the signed telemetry records the agent publishes on the hub's broker.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgefleet_common::quality::ModelQuality;
use edgefleet_common::telemetry::{
    DEFAULT_MAX_RECORD_BYTES, TelemetryRecord, topic, unpack_record,
};
use edgefleet_common::{Signed, TensorData};
use edgefleet_tests::fixtures;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use support::*;

const MODEL: &str = "demand";

fn fast_telemetry(c: &mut edgefleet_agent::AgentConfig) {
    c.telemetry_window_secs = 1;
    c.heartbeat_secs = 1;
    c.telemetry_resend_secs = 2;
}

/// The device's telemetry records as its broker carries them, by sequence number.
struct Records {
    seen: Arc<Mutex<BTreeMap<u64, TelemetryRecord>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Records {
    /// Subscribes to `device`'s telemetry topic on the broker at `url`; returns once the
    /// broker has confirmed the subscription.
    async fn subscribe(url: &str, device: &str) -> Self {
        let b = edgefleet_common::telemetry::BrokerUrl::parse(url).expect("url");
        let mut opts = MqttOptions::new(format!("test-records-{device}"), b.host, b.port);
        opts.set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut events) = AsyncClient::new(opts, 64);
        client
            .subscribe(topic::telemetry(device), QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(deadline, events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    // The broker may not be up yet.
                    tracing_error(&e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => panic!("no SUBACK from the broker at {url}"),
            }
        }
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let store = seen.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let record = unpack_record(&p.payload, DEFAULT_MAX_RECORD_BYTES)
                            .and_then(|b| Signed::<TelemetryRecord>::from_bytes(&b))
                            .and_then(|s| s.decode_unverified())
                            .expect("a record the agent signed");
                        store.lock().expect("lock").insert(record.seq, record);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Records { seen, task }
    }

    fn all(&self) -> Vec<TelemetryRecord> {
        self.seen.lock().expect("lock").values().cloned().collect()
    }

    /// `model` `version`'s quality over every record so far (windows merged).
    fn quality(&self, model: &str, version: u64) -> ModelQuality {
        let mut q = ModelQuality::new(model, version);
        for r in self.all() {
            for x in r
                .quality
                .iter()
                .filter(|x| x.model == model && x.version == version)
            {
                q.merge(x).expect("merge");
            }
        }
        q
    }

    /// Waits until `model` v1 has `matched` rows scored; returns the merged quality.
    async fn wait_matched(&self, model: &str, matched: u64) -> ModelQuality {
        eventually(
            &format!("{matched} rows of {model} scored in the records"),
            || async {
                let q = self.quality(model, 1);
                if q.matched >= matched {
                    Ok(q)
                } else {
                    Err(format!("matched {} so far", q.matched))
                }
            },
        )
        .await
    }
}

impl Drop for Records {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tracing_error(e: &rumqttc::ConnectionError) {
    eprintln!("records subscriber: {e}");
}

/// An inference of `model` with `body`, `header` (a request id header) when given; the JSON
/// answer.
async fn infer_json(
    http: &reqwest::Client,
    url: &str,
    model: &str,
    body: Value,
    header: Option<(&str, &str)>,
) -> Value {
    let mut r = http
        .post(format!("{url}/v2/models/{model}/infer"))
        .json(&body);
    if let Some((k, v)) = header {
        r = r.header(k, v);
    }
    let r = r.send().await.expect("infer");
    let status = r.status();
    let v: Value = r.json().await.expect("json");
    assert!(status.is_success(), "infer: {status} {v}");
    v
}

/// The MLP's inputs for `rows` probe rows, with `id` when given.
fn mlp_body(rows: usize, seed: u64, id: Option<&str>) -> Value {
    let rows = edgefleet_tests::probe_rows(rows, seed);
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    let mut b = json!({"inputs": [{"name": "x", "shape": [rows.len(), edgefleet_tests::FEATURES], "datatype": "FP32", "data": data}]});
    if let Some(id) = id {
        b["id"] = json!(id);
    }
    b
}

fn floats(answer: &Value, output: &str) -> Vec<f64> {
    answer["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["name"] == output))
        .and_then(|o| o["data"].as_array())
        .map(|d| d.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_else(|| panic!("no output {output} in {answer}"))
}

/// `POST …/feedback`: the status and the JSON answer.
async fn feedback(
    http: &reqwest::Client,
    url: &str,
    model: &str,
    body: impl Into<reqwest::Body>,
    header: Option<&str>,
) -> (u16, Value) {
    let mut r = http
        .post(format!("{url}/v2/models/{model}/feedback"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(id) = header {
        r = r.header("x-request-id", id);
    }
    let r = r.send().await.expect("feedback");
    let status = r.status().as_u16();
    let text = r.text().await.expect("text");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn feedback_ok(http: &reqwest::Client, url: &str, model: &str, body: Value) -> Value {
    let (status, v) = feedback(http, url, model, body.to_string(), None).await;
    assert_eq!(status, 200, "{body} → {v}");
    v
}

async fn wait_ready(http: &reqwest::Client, url: &str, model: &str) {
    eventually(&format!("{model} served"), || async {
        match http
            .get(format!("{url}/v2/models/{model}/ready"))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(r.status().to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
}

async fn metric(http: &reqwest::Client, url: &str, name: &str) -> Option<f64> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn regression_quality_in_the_record_is_the_mae_of_the_pairs() {
    let hub = Hub::start_mqtt().await;
    hub.push_mlp(MODEL, 1, 7).await;
    hub.assign("shop-fb", MODEL, 1).await;
    let records = Records::subscribe(&hub.mqtt_url(), "shop-fb").await;
    let agent = Agent::start_with(
        &hub,
        "shop-fb",
        tempfile::tempdir().expect("tmp"),
        fast_telemetry,
    )
    .await;
    let http = client();
    wait_ready(&http, &agent.url, MODEL).await;

    // Three single-row requests with ids in the body, a batch of three, one id as a header.
    let mut predicted: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (i, id) in ["r0", "r1", "r2"].into_iter().enumerate() {
        let a = infer_json(
            &http,
            &agent.url,
            MODEL,
            mlp_body(1, i as u64, Some(id)),
            None,
        )
        .await;
        assert_eq!(a["id"], id);
        predicted.insert(id, floats(&a, "y"));
    }
    let a = infer_json(
        &http,
        &agent.url,
        MODEL,
        mlp_body(3, 10, Some("batch")),
        None,
    )
    .await;
    predicted.insert("batch", floats(&a, "y"));
    let a = infer_json(
        &http,
        &agent.url,
        MODEL,
        mlp_body(1, 11, None),
        Some(("x-request-id", "hdr")),
    )
    .await;
    assert_eq!(a["id"], "hdr", "the header's id is echoed: {a}");
    predicted.insert("hdr", floats(&a, "y"));

    let offsets = [1.5, -2.0, 0.25, 3.0, -0.5, 0.75, -1.25];
    let mut truths: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut k = 0;
    for (id, p) in &predicted {
        truths.insert(
            id,
            p.iter()
                .map(|x| {
                    k += 1;
                    x + offsets[k - 1]
                })
                .collect(),
        );
    }
    // Right after inference: the predictions may still be in the queue, not yet on disk.
    let o = feedback_ok(
        &http,
        &agent.url,
        MODEL,
        json!({"feedback": [
            {"id": "r0", "truth": truths["r0"][0]},
            {"id": "r1", "truth": [truths["r1"][0]]},
            {"id": "r2", "row": 0, "truth": truths["r2"][0]},
            {"id": "batch", "truth": truths["batch"].iter().map(|t| vec![*t]).collect::<Vec<_>>()},
            {"id": "never-seen", "truth": 1.0}
        ]}),
    )
    .await;
    assert_eq!(o["matched"], 6, "{o}");
    assert_eq!(o["unknown"], json!(["never-seen"]), "{o}");
    let (status, o) = feedback(
        &http,
        &agent.url,
        MODEL,
        json!({"truth": truths["hdr"][0]}).to_string(),
        Some("hdr"),
    )
    .await;
    assert_eq!((status, &o["matched"]), (200, &json!(1)), "{o}");

    let q = records.wait_matched(MODEL, 7).await;
    let pairs: Vec<(f64, f64)> = predicted
        .iter()
        .flat_map(|(id, p)| p.iter().copied().zip(truths[id].iter().copied()))
        .collect();
    let n = pairs.len() as f64;
    let mae = pairs.iter().map(|(p, t)| (p - t).abs()).sum::<f64>() / n;
    let rmse = (pairs.iter().map(|(p, t)| (p - t).powi(2)).sum::<f64>() / n).sqrt();
    let got = q.mae().expect("mae");
    assert!((got - mae).abs() < 1e-5, "MAE {got} vs {mae} by hand");
    assert!((q.rmse().expect("rmse") - rmse).abs() < 1e-5);
    assert_eq!(q.matched, 7);
    assert_eq!(
        q.unknown, 1,
        "the unknown id counts against the served version"
    );
    let metrics = (
        metric(&http, &agent.url, "edgefleet_agent_feedback_matched_total").await,
        metric(&http, &agent.url, "edgefleet_agent_feedback_unknown_total").await,
    );
    assert_eq!(metrics, (Some(7.0), Some(1.0)));
    // The hub merged the same records: its drift report and its /metrics show the same MAE.
    let report = eventually("the hub's quality of demand v1", || async {
        let v: Value = http
            .get(hub.api("models/demand/versions/1/drift"))
            .bearer_auth(&hub.token)
            .send()
            .await
            .map_err(|e| Seen(json!(e.to_string())))?
            .json()
            .await
            .map_err(|e| Seen(json!(e.to_string())))?;
        when(v["quality"]["matched"] == 7, v)
    })
    .await;
    let hub_mae = report["quality"]["mae"].as_f64().expect("mae");
    assert!((hub_mae - mae).abs() < 1e-5, "hub MAE {hub_mae} vs {mae}");
    assert_eq!(report["quality"]["unknown"], 1, "{report}");
    assert_eq!(report["quality"]["task"], "regression", "{report}");
    let line = eventually("edgefleet_hub_model_mae on the hub's /metrics", || async {
        let text = http
            .get(format!("{}/metrics", hub.url))
            .send()
            .await
            .map_err(|e| Seen(json!(e.to_string())))?
            .text()
            .await
            .map_err(|e| Seen(json!(e.to_string())))?;
        let line = text
            .lines()
            .find(|l| l.starts_with("edgefleet_hub_model_mae{"))
            .map(str::to_owned);
        found(line, &json!(text))
    })
    .await;
    assert!(line.contains(r#"model="demand""#), "{line}");
    let value: f64 = line
        .split_whitespace()
        .last()
        .and_then(|v| v.parse().ok())
        .expect("a value");
    assert!((value - mae).abs() < 1e-5, "{line} vs {mae}");
    agent.stop().await;
}

/// A fixture classifier as a hub model named `name`, its probabilities' classes named
/// `classes` (none: unnamed).
async fn push_classifier(
    hub: &Hub,
    fixture: &str,
    name: &str,
    classes: &[&str],
) -> fixtures::Fixture {
    let f = fixtures::load()
        .expect("fixtures")
        .into_iter()
        .find(|f| f.name == fixture)
        .expect("fixture");
    let mut m = f.manifest().expect("manifest");
    m.name = name.into();
    m.outputs[1].feature_names = classes.iter().map(|s| s.to_string()).collect();
    hub.push(&m, &std::fs::read(&f.path).expect("artifact"))
        .await;
    f
}

fn rows_body(f: &fixtures::Fixture, rows: std::ops::Range<usize>, id: &str) -> Value {
    let c = f.input.shape[1] as usize;
    let TensorData::Fp32(v) = &f.input.data else {
        panic!("FP32 input")
    };
    json!({"id": id, "inputs": [{"name": f.input.name, "shape": [rows.len(), c], "datatype": "FP32", "data": v[rows.start * c..rows.end * c]}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn classification_quality_in_the_record_is_the_accuracy_and_log_loss_of_the_pairs() {
    let hub = Hub::start_mqtt().await;
    // Integer labels, unnamed classes; and three classes named on the probability output.
    let binary = push_classifier(&hub, "logreg_binary", "churn", &[]).await;
    let multi = push_classifier(
        &hub,
        "logreg_multi",
        "species",
        &["setosa", "versicolor", "virginica"],
    )
    .await;
    hub.assign("shop-cls", "churn", 1).await;
    hub.assign("shop-cls", "species", 1).await;
    let records = Records::subscribe(&hub.mqtt_url(), "shop-cls").await;
    let agent = Agent::start_with(
        &hub,
        "shop-cls",
        tempfile::tempdir().expect("tmp"),
        fast_telemetry,
    )
    .await;
    let http = client();
    for (model, f, names) in [
        ("churn", &binary, &[][..]),
        (
            "species",
            &multi,
            &["setosa", "versicolor", "virginica"][..],
        ),
    ] {
        wait_ready(&http, &agent.url, model).await;
        let a = infer_json(&http, &agent.url, model, rows_body(f, 0..12, "batch"), None).await;
        let labels = floats(&a, "output_label");
        let probs = floats(&a, "output_probability");
        let c = probs.len() / labels.len();
        // Truths that are right about two thirds of the time.
        let truths: Vec<usize> = labels
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                if i % 3 == 2 {
                    (l as usize + 1) % c
                } else {
                    l as usize
                }
            })
            .collect();
        let as_json = |k: usize| {
            if names.is_empty() {
                json!(k)
            } else {
                json!(names[k])
            }
        };
        // Half by the per-row list, half one item per row.
        let mut items = vec![];
        for (i, &t) in truths.iter().enumerate() {
            items.push(json!({"id": "batch", "row": i, "truth": as_json(t)}));
        }
        let o = feedback_ok(&http, &agent.url, model, json!({"feedback": items})).await;
        assert_eq!(o["matched"], 12, "{o}");
        let q = records.wait_matched(model, 12).await;
        let correct = labels
            .iter()
            .zip(&truths)
            .filter(|(l, t)| **l as usize == **t)
            .count();
        let log_loss = truths
            .iter()
            .enumerate()
            .map(|(i, &t)| -probs[i * c + t].clamp(1e-15, 1.0).ln())
            .sum::<f64>()
            / 12.0;
        assert_eq!(q.accuracy(), Some(correct as f64 / 12.0), "{model}");
        let got = q.log_loss().expect("log loss");
        assert!(
            (got - log_loss).abs() < 1e-5,
            "{model}: log-loss {got} vs {log_loss} by hand"
        );
        if !names.is_empty() {
            let cells = q
                .classification
                .as_ref()
                .expect("classifier")
                .confusion
                .clone();
            assert!(
                cells
                    .iter()
                    .all(|c| names.contains(&c.truth.as_str())
                        && names.contains(&c.predicted.as_str())),
                "labels read as the class names: {cells:?}"
            );
        }
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn feedback_after_the_window_closed_lands_in_the_next_window_as_late() {
    let hub = Hub::start_mqtt().await;
    hub.push_mlp(MODEL, 1, 7).await;
    hub.assign("shop-late", MODEL, 1).await;
    let records = Records::subscribe(&hub.mqtt_url(), "shop-late").await;
    let agent = Agent::start_with(
        &hub,
        "shop-late",
        tempfile::tempdir().expect("tmp"),
        fast_telemetry,
    )
    .await;
    let http = client();
    wait_ready(&http, &agent.url, MODEL).await;
    let a = infer_json(
        &http,
        &agent.url,
        MODEL,
        mlp_body(1, 3, Some("late-1")),
        None,
    )
    .await;
    let p = floats(&a, "y")[0];
    // The window with the request closes and its record goes out.
    let closed = eventually("the request's window in a record", || async {
        records
            .all()
            .into_iter()
            .find(|r| r.models.iter().any(|m| m.model == MODEL && m.requests > 0))
            .ok_or("no record with the request yet")
    })
    .await;
    let o = feedback_ok(
        &http,
        &agent.url,
        MODEL,
        json!({"feedback": [{"id": "late-1", "truth": p + 2.0}]}),
    )
    .await;
    assert_eq!((&o["matched"], &o["late"]), (&json!(1), &json!(1)), "{o}");
    let q = records.wait_matched(MODEL, 1).await;
    assert_eq!((q.matched, q.late), (1, 1));
    assert!((q.mae().expect("mae") - 2.0).abs() < 1e-5);
    let with_quality = records
        .all()
        .into_iter()
        .find(|r| !r.quality.is_empty())
        .expect("the quality's record");
    assert!(
        with_quality.seq > closed.seq,
        "a later window: {} after {}",
        with_quality.seq,
        closed.seq
    );
    assert!(
        with_quality.models.is_empty(),
        "a window with feedback and no request is still reported: {:?}",
        with_quality.models
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prediction_survives_kill_9_and_its_feedback_matches_after_restart() {
    let hub = Hub::start().await;
    hub.push_mlp(MODEL, 1, 7).await;
    hub.assign("shop-k9", MODEL, 1).await;
    let data = tempfile::tempdir().expect("tmp");
    let http = client();
    let mut a = AgentProcess::spawn(&hub.url, &hub.root_pub_path, "shop-k9", data.path(), None);
    let url = a.wait_listening().await;
    wait_ready(&http, &url, MODEL).await;
    let answer = infer_json(&http, &url, MODEL, mlp_body(2, 5, Some("k9")), None).await;
    let p = floats(&answer, "y");
    eventually("the prediction held on disk", || async {
        match metric(&http, &url, "edgefleet_agent_feedback_predictions").await {
            Some(n) if n >= 1.0 => Ok(n),
            other => Err(other),
        }
    })
    .await;
    a.kill9().await;

    let mut b = AgentProcess::spawn(DEAD_HUB, &hub.root_pub_path, "shop-k9", data.path(), None);
    let url = b.wait_listening().await;
    wait_ready(&http, &url, MODEL).await;
    assert_eq!(
        metric(&http, &url, "edgefleet_agent_feedback_predictions").await,
        Some(1.0)
    );
    let o = feedback_ok(
        &http,
        &url,
        MODEL,
        json!({"feedback": [{"id": "k9", "truth": [p[0] + 1.0, p[1] - 1.0]}]}),
    )
    .await;
    assert_eq!((&o["matched"], &o["late"]), (&json!(2), &json!(2)), "{o}");
    eventually("the answered prediction gone from the store", || async {
        match metric(&http, &url, "edgefleet_agent_feedback_predictions").await {
            Some(0.0) => Ok(()),
            other => Err(other),
        }
    })
    .await;
    b.kill9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_bad_call_gets_its_4xx_and_a_flood_gets_200_404_or_429_only() {
    let hub = Hub::start().await;
    hub.push_mlp(MODEL, 1, 7).await;
    hub.assign("shop-bad", MODEL, 1).await;
    let agent = Agent::start(&hub, "shop-bad").await;
    let http = client();
    wait_ready(&http, &agent.url, MODEL).await;
    infer_json(&http, &agent.url, MODEL, mlp_body(1, 1, Some("one")), None).await;
    infer_json(
        &http,
        &agent.url,
        MODEL,
        mlp_body(3, 2, Some("three")),
        None,
    )
    .await;
    let big = format!(
        r#"{{"feedback": [{{"id": "one", "truth": 1.0, "row": 0}}], "pad": "{}"}}"#,
        "x".repeat(1 << 20)
    );
    let many = json!({"feedback": (0..1025).map(|i| json!({"id": format!("u{i}"), "truth": 1.0})).collect::<Vec<_>>()});
    let cases: Vec<(String, Option<&str>, u16, &str)> = vec![
        (
            json!({"feedback": [{"id": "one", "truth": [1.0, 2.0]}]}).to_string(),
            None,
            400,
            "2 values for a row of 1 element",
        ),
        (
            json!({"feedback": [{"id": "one", "truth": "cat"}]}).to_string(),
            None,
            400,
            "regression",
        ),
        (
            json!({"feedback": [{"id": "three", "row": 3, "truth": 1.0}]}).to_string(),
            None,
            400,
            "row 3 is out of range",
        ),
        (
            json!({"feedback": [{"id": "three", "truth": [1.0, 2.0]}]}).to_string(),
            None,
            400,
            "2 truths for a prediction of 3 rows",
        ),
        (
            json!({"feedback": [{"id": "one", "truth": "NaN"}]}).to_string(),
            None,
            400,
            "NaN",
        ),
        (
            r#"{"feedback": [{"id": "one", "truth": 1e999}]}"#.to_owned(),
            None,
            400,
            "out of range",
        ),
        (json!({"feedback": []}).to_string(), None, 400, "empty"),
        (
            json!({"feedback": [{"truth": 1.0}]}).to_string(),
            None,
            400,
            "missing \"id\"",
        ),
        (
            json!({"truth": 1.0}).to_string(),
            None,
            400,
            "missing \"id\"",
        ),
        ("not json".to_owned(), None, 400, "malformed"),
        (big, None, 413, "over the limit"),
        (many.to_string(), None, 413, "1025 items"),
        (
            json!({"feedback": [{"id": "nobody", "truth": 1.0}]}).to_string(),
            None,
            404,
            "feedback_max_age_secs",
        ),
    ];
    for (body, header, status, needle) in cases {
        let (got, v) = feedback(&http, &agent.url, MODEL, body.clone(), header).await;
        let shown: String = body.chars().take(120).collect();
        assert_eq!(got, status, "{shown} → {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains(needle)),
            "{shown} → {v} should say {needle:?}"
        );
    }
    let (s, v) = feedback(
        &http,
        &agent.url,
        MODEL,
        json!({"truth": 1.0}).to_string(),
        Some("one"),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = feedback(
        &http,
        &agent.url,
        MODEL,
        json!({"truth": 1.0}).to_string(),
        Some("one"),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["duplicate"], json!(["one"]));
    let (s, v) = feedback(
        &http,
        &agent.url,
        "ghost",
        json!({"id": "one", "truth": 1.0}).to_string(),
        None,
    )
    .await;
    assert_eq!(s, 404, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("not served here")),
        "{v}"
    );

    // The flood: a batch of 200 rows to answer row by row, and unknown ids, all at once.
    infer_json(
        &http,
        &agent.url,
        MODEL,
        mlp_body(200, 3, Some("flood")),
        None,
    )
    .await;
    let calls = (0..3000).map(|i| {
        let http = http.clone();
        let url = agent.url.clone();
        async move {
            let body = if i < 200 {
                json!({"feedback": [{"id": "flood", "row": i, "truth": 1.0}]})
            } else {
                json!({"feedback": [{"id": format!("unknown-{i}"), "truth": 1.0}]})
            };
            feedback(&http, &url, MODEL, body.to_string(), None).await.0
        }
    });
    let statuses = futures_util::future::join_all(calls).await;
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    for s in statuses {
        *counts.entry(s).or_default() += 1;
    }
    eprintln!("flood of 3000 feedback calls: {counts:?}");
    assert!(
        counts.keys().all(|s| [200, 404, 429].contains(s)),
        "only 200, 404 and 429: {counts:?}"
    );
    assert!(counts.get(&200).copied().unwrap_or(0) >= 1, "{counts:?}");
    // Still up, still serving.
    let a = infer_json(
        &http,
        &agent.url,
        MODEL,
        mlp_body(1, 4, Some("after")),
        None,
    )
    .await;
    assert_eq!(a["id"], "after");
    agent.stop().await;
}

/// `GET` an admin API path of the hub as JSON.
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

/// Sample capture end to end: off by default; switched on at the hub, the device keeps a
/// reservoir of matched rows (capped per window however many come) and the hub's export holds
/// exactly those rows, with the digest of exactly its bytes; switched off, no sample leaves
/// the device.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn captured_samples_reach_the_hub_and_the_export_holds_exactly_them() {
    let hub = Hub::start_mqtt().await;
    hub.push_mlp(MODEL, 1, 7).await;
    hub.assign("shop-cap", MODEL, 1).await;
    let http = client();
    let put = http
        .put(hub.api("models/demand/capture"))
        .bearer_auth(&hub.token)
        .json(&json!({"rate": 1.0, "max_rows": 3}))
        .send()
        .await
        .expect("capture on");
    assert_eq!(put.status(), 200);
    let bad = http
        .put(hub.api("models/demand/capture"))
        .bearer_auth(&hub.token)
        .json(&json!({"rate": 2.0, "max_rows": 3}))
        .send()
        .await
        .expect("bad capture");
    assert_eq!(bad.status(), 400);
    let agent = Agent::start_with(&hub, "shop-cap", tempfile::tempdir().expect("tmp"), |c| {
        c.telemetry_window_secs = 3;
        c.heartbeat_secs = 1;
        c.telemetry_resend_secs = 2;
    })
    .await;
    wait_ready(&http, &agent.url, MODEL).await;
    // The instruction arrives with the bundle that installed the model.
    eventually("capture in force on the device", || async {
        let n = metric(&http, &agent.url, "edgefleet_agent_capture_models").await;
        when(n == Some(1.0), json!(n))
    })
    .await;
    // Five predictions, their truths in one call: all offered to one window's reservoir of 3.
    let mut rows = Vec::new();
    for i in 0..5u64 {
        let id = format!("c{i}");
        let a = infer_json(
            &http,
            &agent.url,
            MODEL,
            mlp_body(1, 200 + i, Some(&id)),
            None,
        )
        .await;
        rows.push((
            id,
            floats(&a, "y")[0],
            edgefleet_tests::probe_rows(1, 200 + i),
        ));
    }
    let truths: Vec<f64> = (0..5).map(|i| 100.0 + i as f64).collect();
    let items: Vec<Value> = rows
        .iter()
        .zip(&truths)
        .map(|((id, _, _), t)| json!({"id": id, "truth": t}))
        .collect();
    let o = feedback_ok(&http, &agent.url, MODEL, json!({"feedback": items})).await;
    assert_eq!(o["matched"], 5, "{o}");
    let summary = eventually("the hub holds the captured rows", || async {
        let v = hub_json(&http, &hub, "models/demand/samples").await?;
        when(v["rows"].as_u64() >= Some(3), v)
    })
    .await;
    assert_eq!(
        summary["rows"], 3,
        "three rows kept of five offered: {summary}"
    );
    // The export, with the admin CLI: exactly those rows, each one of ours with its inputs,
    // prediction and truth; the digest it prints is the file's; the schema types them.
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("demand.csv");
    let out = tokio::process::Command::new(bin("edgefleet"))
        .args(["--hub", &hub.url, "--token", &hub.token, "--json"])
        .args(["samples", "demand", "--export"])
        .arg(&file)
        .output()
        .await
        .expect("edgefleet");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).expect("json");
    let csv = std::fs::read(&file).expect("the CSV");
    assert_eq!(printed["rows"], 3, "{printed}");
    assert_eq!(
        printed["sha256"],
        edgefleet_common::Digest::of(&csv).to_string()
    );
    let schema: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("demand.csv.schema.json")).expect("the schema"),
    )
    .expect("schema json");
    let fields = schema["fields"].as_array().expect("fields");
    assert_eq!(fields.len(), 3 + edgefleet_tests::FEATURES + 2, "{schema}");
    assert_eq!(fields[3]["type"], "number");
    assert_eq!(fields[3]["role"], "input");
    let last = &fields[fields.len() - 1];
    assert_eq!(
        (
            last["name"].as_str(),
            last["type"].as_str(),
            last["role"].as_str()
        ),
        (Some("truth_y"), Some("number"), Some("truth"))
    );
    // Over HTTP: `format=schema` describes the same bytes; an unknown format is a 400 that
    // names the ones there are.
    let described = hub_json(&http, &hub, "models/demand/samples/export?format=schema")
        .await
        .expect("schema");
    assert_eq!(
        (&described["sha256"], &described["rows"]),
        (&printed["sha256"], &json!(3)),
        "{described}"
    );
    let bogus = http
        .get(hub.api("models/demand/samples/export?format=parquet2"))
        .bearer_auth(&hub.token)
        .send()
        .await
        .expect("export");
    let status = bogus.status().as_u16();
    let body = bogus.text().await.unwrap_or_default();
    assert!(
        status == 400 && body.contains("parquet2") && body.contains("csv"),
        "{status} {body}"
    );
    let text = String::from_utf8(csv.to_vec()).expect("utf-8");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    assert_eq!(&header[..3], ["device", "version", "made_at"]);
    assert_eq!(
        header.len(),
        3 + edgefleet_tests::FEATURES + 2,
        "{header:?}"
    );
    assert_eq!(header[header.len() - 2..], ["predicted_y", "truth_y"]);
    let exported: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    assert_eq!(exported.len(), 3, "{text}");
    for e in &exported {
        assert_eq!(e[0], "shop-cap");
        let truth: f64 = e[e.len() - 1].parse().expect("truth");
        let i = truths
            .iter()
            .position(|t| *t == truth)
            .unwrap_or_else(|| panic!("a truth we did not send: {e:?}"));
        let (_, pred, inputs) = &rows[i];
        let got_pred: f64 = e[e.len() - 2].parse().expect("prediction");
        assert!((got_pred - pred).abs() < 1e-4, "{got_pred} vs {pred}");
        for (j, x) in inputs[0].iter().enumerate() {
            let got: f64 = e[3 + j].parse().expect("input");
            assert!(
                (got - f64::from(*x)).abs() < 1e-5,
                "input {j}: {got} vs {x}"
            );
        }
    }
    // Off: later feedback is scored, but no sample leaves the device.
    let off = http
        .delete(hub.api("models/demand/capture"))
        .bearer_auth(&hub.token)
        .send()
        .await
        .expect("capture off");
    assert_eq!(off.status(), 200);
    eventually("the device stops keeping inputs", || async {
        let v = hub_json(&http, &hub, "models/demand/capture").await?;
        when(v["capture"] == false, v)
    })
    .await;
    eventually("capture off on the device", || async {
        let n = metric(&http, &agent.url, "edgefleet_agent_capture_models").await;
        when(n == Some(0.0), json!(n))
    })
    .await;
    let before = hub_json(&http, &hub, "models/demand/versions/1/drift")
        .await
        .expect("drift")["quality"]["matched"]
        .as_u64()
        .unwrap_or(0);
    for i in 0..5u64 {
        let id = format!("d{i}");
        infer_json(
            &http,
            &agent.url,
            MODEL,
            mlp_body(1, 300 + i, Some(&id)),
            None,
        )
        .await;
        feedback_ok(
            &http,
            &agent.url,
            MODEL,
            json!({"feedback": [{"id": id, "truth": 1.0}]}),
        )
        .await;
    }
    eventually("the later feedback reached the hub", || async {
        let v = hub_json(&http, &hub, "models/demand/versions/1/drift").await?;
        when(v["quality"]["matched"].as_u64() >= Some(before + 5), v)
    })
    .await;
    let after = hub_json(&http, &hub, "models/demand/samples")
        .await
        .expect("summary");
    assert_eq!(
        after["rows"], 3,
        "no sample after capture was switched off: {after}"
    );
    agent.stop().await;
}
