//! Telemetry end to end: real agents, real hubs, real MQTT brokers (the hub's embedded
//! rumqttd, a Mosquitto this test starts and stops, and the machine's Mosquitto at
//! 127.0.0.1:1883 when one runs there).

mod support;

use std::time::Duration;

use edgefleet_common::device::AssignmentBundle;
use edgefleet_common::sample::{SampleBatch, SampleRow, Value as Sample};
use edgefleet_common::sketch::{ColumnKind, ColumnSpec, Profile};
use edgefleet_common::telemetry::{
    Health, ModelWindow, OutboxStats, TelemetryRecord, pack_record, topic,
};
use edgefleet_common::{SecretKey, Signed};
use edgefleet_tests::{FEATURE_NAMES, Mlp, probe_rows};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use support::*;

const MODEL: &str = "demand";

/// Pushes an MLP whose manifest carries a reference profile of its training inputs.
async fn push_with_reference(hub: &Hub, version: u64) -> Mlp {
    let mlp = Mlp::new(7);
    let artifact = mlp.to_onnx();
    let mut m = hub.manifest(MODEL, version, &mlp, &artifact);
    let schema: Vec<ColumnSpec> = FEATURE_NAMES
        .iter()
        .map(|n| ColumnSpec {
            name: (*n).into(),
            kind: ColumnKind::Numeric,
        })
        .collect();
    let mut reference = Profile::new(&schema, 200).expect("profile");
    for row in probe_rows(4000, 1) {
        let row: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
        reference.update_row(&row).expect("row");
    }
    m.reference_profile = Some(reference.to_bytes());
    hub.push(&m, &artifact).await;
    mlp
}

/// Rows like the training data, with the first feature shifted by `shift`.
fn traffic(n: usize, seed: u64, shift: f32) -> Vec<Vec<f32>> {
    probe_rows(n, seed)
        .into_iter()
        .map(|mut r| {
            r[0] += shift;
            r
        })
        .collect()
}

fn fast_telemetry(c: &mut edgefleet_agent::AgentConfig) {
    c.telemetry_window_secs = 1;
    c.heartbeat_secs = 1;
    c.telemetry_resend_secs = 2;
}

async fn get(hub: &Hub, path: &str) -> Value {
    let r = hub
        .http
        .get(hub.api(path))
        .bearer_auth(&hub.token)
        .send()
        .await
        .expect("request");
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.expect("json")
}

/// A device assigned the model, serving it, with 1-second windows.
async fn device(hub: &Hub, id: &str) -> Agent {
    hub.assign(id, MODEL, 1).await;
    let agent = Agent::start_with(hub, id, tempfile::tempdir().expect("tmp"), fast_telemetry).await;
    serve_model(&agent, &client()).await;
    agent
}

async fn serve_model(agent: &Agent, http: &reqwest::Client) {
    eventually("the agent to serve the model", || async {
        infer_ok(http, &agent.url, MODEL, &traffic(1, 9, 0.0)).await
    })
    .await;
}

/// Sends `batches` requests of 20 rows, shifted by `shift`.
async fn send(http: &reqwest::Client, url: &str, batches: usize, shift: f32) {
    for i in 0..batches {
        let r = infer(http, url, MODEL, &traffic(20, 100 + i as u64, shift)).await;
        assert!(r.status().is_success(), "infer: {}", r.status());
    }
}

/// Every record of the device is stored once. Called once traffic has stopped: waits for a
/// heartbeat sent after the last window closed that shows an empty outbox (every record acked,
/// so committed), then checks that the fleet aggregate holds one window per sequence number
/// (each record carries one model window; a duplicate merged twice would show).
async fn wait_all_stored_once(hub: &Hub, device: &str) -> u64 {
    let since = now() + 2;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let d = get(hub, &format!("devices/{device}")).await;
        let l = &d["liveness"];
        if l["outbox"]["queued"].as_u64() == Some(0) && l["at"].as_u64() >= Some(since) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the device's outbox did not drain (since {since}): {d}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seq = get(hub, &format!("devices/{device}")).await["telemetry"]["seq"]
        .as_u64()
        .expect("a stored window");
    let drift = get(
        hub,
        &format!(
            "models/{MODEL}/versions/1/drift?from={}&to={}",
            now() - 86_400,
            now() + 7200
        ),
    )
    .await;
    assert_eq!(
        drift["windows"].as_u64(),
        Some(seq),
        "every record stored exactly once: {drift}"
    );
    seq
}

/// A fleet of one device whose inputs drifted: the hub (embedded broker) holds the model with
/// its reference profile; `shop-1`, tagged `shops`, serves it with 1-second windows and has
/// answered 100 requests of 20 rows whose first feature (fuel prices jump) moved by three
/// reference standard deviations; the hub reports that feature drifted.
struct Drifted {
    hub: Hub,
    agent: Agent,
    http: reqwest::Client,
    /// The first drift report that showed the shift.
    drift: Value,
}

const TAG: &str = "shops";

fn drift_path(query: &str) -> String {
    format!("models/{MODEL}/versions/1/drift{query}")
}

impl Drifted {
    async fn start() -> Self {
        let hub = Hub::start_mqtt().await;
        push_with_reference(&hub, 1).await;
        hub.assign("shop-1", MODEL, 1).await;
        let agent = Agent::start_with(&hub, "shop-1", tempfile::tempdir().expect("tmp"), |c| {
            fast_telemetry(c);
            c.tags = vec![TAG.into()];
        })
        .await;
        let http = client();
        serve_model(&agent, &http).await;
        send(&http, &agent.url, 100, 5.0).await;
        let drift = eventually("drift of the shifted feature", || async {
            let d = get(&hub, &drift_path("")).await;
            when(drifted(&d).contains(&FEATURE_NAMES[0].to_owned()), d)
        })
        .await;
        Drifted {
            hub,
            agent,
            http,
            drift,
        }
    }

    /// A column's score in the first report that showed the drift.
    fn score(&self, name: &str) -> f64 {
        self.drift["columns"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["column"] == name))
            .and_then(|c| c["score"].as_f64())
            .unwrap_or_else(|| panic!("no score for {name}: {}", self.drift))
    }

    /// The device detail once the hub has both a heartbeat (online) and a window from it.
    async fn online(&self) -> Value {
        eventually("a heartbeat and a window", || async {
            let d = get(&self.hub, "devices/shop-1").await;
            when(
                d["online"] == true && d["telemetry"]["seq"].as_u64().is_some(),
                d,
            )
        })
        .await
    }

    async fn stop(self) {
        self.agent.stop().await;
    }
}

/// A drift report's `drifted` list.
fn drifted(report: &Value) -> Vec<String> {
    serde_json::from_value(report["drifted"].clone())
        .unwrap_or_else(|e| panic!("drifted: {e}: {report}"))
}

/// A drift report's columns, by name.
fn column_names(report: &Value) -> Vec<String> {
    report["columns"]
        .as_array()
        .unwrap_or_else(|| panic!("no columns: {report}"))
        .iter()
        .map(|c| c["column"].as_str().expect("a column name").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drift_is_detected_on_the_shifted_feature() {
    let f = Drifted::start().await;
    assert_eq!(f.drift["has_reference"], true, "{}", f.drift);
    assert!(
        f.score(FEATURE_NAMES[0]) > 3.0 * f.score(FEATURE_NAMES[1]),
        "shifted feature stands out: {}",
        f.drift
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unshifted_features_stay_near_zero_drift() {
    let f = Drifted::start().await;
    // 2000 rows: sampling noise and the KLL rank error of k = 200 leave them well under a
    // shifted feature's score.
    for name in &FEATURE_NAMES[1..] {
        assert!(f.score(name) < 0.2, "{name}: {}", f.drift);
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_feature_filter_returns_that_column_only() {
    let f = Drifted::start().await;
    let all = column_names(&f.drift);
    assert_eq!(all.len(), FEATURE_NAMES.len(), "{}", f.drift);
    // The shifted first column, one from the middle and the last: a filter that returned the
    // first column, or any fixed one, fails here.
    for name in [
        FEATURE_NAMES[0],
        FEATURE_NAMES[3],
        FEATURE_NAMES[FEATURE_NAMES.len() - 1],
    ] {
        let one = get(&f.hub, &drift_path(&format!("?feature={name}"))).await;
        assert_eq!(column_names(&one), [name], "?feature={name}: {one}");
        // `drifted` is filtered too: the shifted feature only when asked for.
        let want: Vec<String> = if name == FEATURE_NAMES[0] {
            vec![name.to_owned()]
        } else {
            vec![]
        };
        assert_eq!(
            drifted(&one)
                .into_iter()
                .filter(|d| d == FEATURE_NAMES[0])
                .collect::<Vec<_>>(),
            want,
            "?feature={name}: {one}"
        );
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_drift_range_is_refused() {
    let hub = Hub::start_mqtt().await;
    push_with_reference(&hub, 1).await;
    let r = hub
        .http
        .get(hub.api(&drift_path("?from=10&to=5")))
        .bearer_auth(&hub.token)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 400);
    let reason = r.text().await.expect("text");
    assert!(reason.contains("range"), "a reason: {reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tag_scope_covers_the_tagged_devices_only() {
    let f = Drifted::start().await;
    let shops = get(&f.hub, &drift_path(&format!("?tag={TAG}"))).await;
    assert_eq!(shops["scope"], TAG, "{shops}");
    assert!(
        shops["windows"].as_u64() >= Some(1) && shops["requests"].as_u64() >= Some(1),
        "{shops}"
    );
    assert!(
        drifted(&shops).contains(&FEATURE_NAMES[0].to_owned()),
        "{shops}"
    );
    let vans = get(&f.hub, &drift_path("?tag=vans")).await;
    assert_eq!(vans["scope"], "vans", "{vans}");
    assert_eq!(
        (&vans["windows"], &vans["requests"], &vans["rows"]),
        (&Value::from(0u64), &Value::from(0u64), &Value::from(0u64)),
        "no device is tagged vans: {vans}"
    );
    assert!(column_names(&vans).is_empty(), "{vans}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drift_rules_are_set_per_model_and_nonsense_is_refused() {
    let f = Drifted::start().await;
    let hub = &f.hub;
    // PSI for numbers, KS for one column.
    let put = |body: Value| {
        hub.http
            .put(hub.api(&format!("models/{MODEL}/drift-config")))
            .bearer_auth(&hub.token)
            .json(&body)
            .send()
    };
    let r = put(serde_json::json!({
        "numeric": {"method": "psi", "threshold": 0.2},
        "columns": {(FEATURE_NAMES[1]): {"method": "ks", "threshold": 0.1}}
    }))
    .await
    .expect("put");
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.unwrap_or_default()
    );
    let d = get(hub, &drift_path("")).await;
    let method = |i: usize| {
        d["columns"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["column"] == FEATURE_NAMES[i]))
            .map(|c| c["method"].clone())
    };
    assert_eq!(method(0), Some("psi".into()), "{d}");
    assert_eq!(method(1), Some("ks".into()), "{d}");
    for bad in [
        serde_json::json!({"numeric": {"method": "psi", "threshold": -1.0}}),
        serde_json::json!({"numeric": {"method": "magic", "threshold": 0.1}}),
        serde_json::json!({"numerics": {}}),
    ] {
        let r = put(bad.clone()).await.expect("put");
        assert!(r.status().is_client_error(), "{bad} -> {}", r.status());
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_detail_shows_health_liveness_and_the_latest_window() {
    let f = Drifted::start().await;
    let device = f.online().await;
    assert!(
        device["liveness"]["health"]["memory_total_bytes"].as_u64() > Some(0),
        "{device}"
    );
    assert_eq!(device["outbox_dropped"], 0, "{device}");
    assert!(device["last_seen"].as_u64().is_some(), "{device}");
    let models = &device["telemetry"]["models"];
    assert!(
        models[0]["model"] == MODEL
            && models[0]["version"] == 1
            && models[0]["requests"].as_u64() >= Some(1),
        "the latest window is the model's: {device}"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleet_metrics_count_the_online_device_and_stored_records() {
    let f = Drifted::start().await;
    f.online().await;
    // The stored counter is bumped after the batch commits, a moment after the aggregates
    // (what `online` waits for) are readable.
    let fleet = eventually("a stored record counted", || async {
        let fleet = get(&f.hub, "fleet/metrics").await;
        when(fleet["ingest"]["stored"].as_u64() >= Some(1), fleet)
    })
    .await;
    assert_eq!(fleet["devices"]["online"], 1, "{fleet}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hubs_prometheus_exposition_has_devices_drift_and_refusals() {
    let f = Drifted::start().await;
    f.online().await;
    let text = f
        .hub
        .http
        .get(format!("{}/metrics", f.hub.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(text.contains("edgefleet_hub_devices_online 1"), "{text}");
    assert!(
        text.contains(&format!("feature=\"{}\"", FEATURE_NAMES[0]))
            && text.contains("edgefleet_hub_drift_score"),
        "{text}"
    );
    assert!(
        text.contains("edgefleet_hub_telemetry_rejected_total{reason=\"bad_signature\"} 0"),
        "{text}"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agents_prometheus_exposition_has_its_outbox() {
    let f = Drifted::start().await;
    let agent_text = f
        .http
        .get(format!("{}/metrics", f.agent.url))
        .send()
        .await
        .expect("agent metrics")
        .text()
        .await
        .expect("text");
    assert!(
        agent_text.contains("edgefleet_agent_outbox_queued"),
        "{agent_text}"
    );
    f.stop().await;
}

/// Retained messages anyone on the broker can read: the device's signed assignment bundle
/// and the JSON fleet summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retained_mqtt_messages_carry_the_signed_assignment_and_the_fleet_summary() {
    let f = Drifted::start().await;
    let retained = subscribe_retained(
        &f.hub.mqtt_url(),
        &[topic::assignment("shop-1"), topic::fleet_summary(MODEL, 1)],
    )
    .await;
    let bundle = AssignmentBundle::from_wire(&retained[0]).expect("a bundle");
    let a = bundle.assignments[0]
        .verify(
            &edgefleet_common::TrustRoot::new(f.hub.root.public()),
            now(),
        )
        .expect("signed by the hub");
    assert_eq!((a.model.as_str(), a.version), (MODEL, 1));
    let summary: Value = serde_json::from_slice(&retained[1]).expect("JSON summary");
    assert_eq!(summary["model"], MODEL);
    assert!(summary["requests"].as_u64() >= Some(1), "{summary}");
    f.stop().await;
}

/// Connects, subscribes to `topics`, returns the first message of each (retained ones
/// arrive at once).
async fn subscribe_retained(url: &str, topics: &[String]) -> Vec<Vec<u8>> {
    let b = edgefleet_common::telemetry::BrokerUrl::parse(url).expect("url");
    let mut opts = MqttOptions::new(
        format!("test-{}", now() ^ u64::from(std::process::id())),
        b.host,
        b.port,
    );
    opts.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut events) = AsyncClient::new(opts, 16);
    for t in topics {
        client
            .subscribe(t, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
    }
    let mut got: Vec<Option<Vec<u8>>> = vec![None; topics.len()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.iter().any(Option::is_none) {
        let Ok(e) = tokio::time::timeout_at(deadline, events.poll()).await else {
            let missing: Vec<&String> = topics
                .iter()
                .zip(&got)
                .filter(|(_, g)| g.is_none())
                .map(|(t, _)| t)
                .collect();
            panic!("no retained message on {missing:?}");
        };
        if let Ok(Event::Incoming(Packet::Publish(p))) = e
            && let Some(i) = topics.iter().position(|t| *t == p.topic)
        {
            got[i] = Some(p.payload.to_vec());
        }
    }
    let _ = client.disconnect().await;
    got.into_iter().flatten().collect()
}

/// Publishes raw payloads on the broker, as anyone on it could.
async fn publish_raw(url: &str, messages: Vec<(String, Vec<u8>)>) {
    let b = edgefleet_common::telemetry::BrokerUrl::parse(url).expect("url");
    let mut opts = MqttOptions::new("test-attacker", b.host, b.port);
    opts.set_max_packet_size(16 << 20, 16 << 20);
    let (client, mut events) = AsyncClient::new(opts, 64);
    let n = messages.len();
    for (t, p) in messages {
        client
            .publish(t, QoS::AtLeastOnce, false, p)
            .await
            .expect("publish");
    }
    let mut acked = 0;
    while acked < n {
        match tokio::time::timeout(Duration::from_secs(20), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            other => panic!("publishing: {other:?}"),
        }
    }
    let _ = client.disconnect().await;
}

fn record(device: &str, seq: u64) -> TelemetryRecord {
    TelemetryRecord {
        device_id: device.into(),
        seq,
        window_start: now() - 60,
        window_end: now(),
        models: vec![ModelWindow {
            model: MODEL.into(),
            version: 1,
            profile: Profile::new(&[], 200).expect("empty").to_bytes(),
            latency: Vec::<u8>::from(edgefleet_common::sketch::LatencySketch::default()),
            requests: 1,
            errors: 0,
        }],
        health: Health::default(),
        outbox: OutboxStats::default(),
        agent_version: "test".into(),
        quality: vec![],
    }
}

fn ghost_model(device: &str) -> TelemetryRecord {
    let mut r = record(device, 1);
    r.models[0].model = "ghost".into();
    r
}

fn wrong_columns(device: &str) -> TelemetryRecord {
    let mut r = record(device, 2);
    let schema = [ColumnSpec {
        name: "not_a_feature".into(),
        kind: ColumnKind::Numeric,
    }];
    let mut p = Profile::new(&schema, 200).expect("profile");
    p.update_row(&[1.0]).expect("row");
    r.models[0].profile = p.to_bytes();
    r
}

/// A sample batch of `model` from `device`: one row of the demand model's columns.
fn sample_batch(device: &str, model: &str) -> SampleBatch {
    SampleBatch {
        device_id: device.into(),
        seq: 9,
        model: model.into(),
        version: 1,
        window_start: now() - 60,
        window_end: now(),
        offered: 1,
        inputs: FEATURE_NAMES.iter().map(|s| s.to_string()).collect(),
        outputs: vec!["y".into()],
        rows: vec![SampleRow {
            made_at: now() - 30,
            inputs: vec![1.0; FEATURE_NAMES.len()],
            predicted: vec![Sample::Number(2.0)],
            truth: vec![Sample::Number(2.5)],
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spoofed_garbage_oversize_and_unknown_messages_are_counted_and_the_hub_keeps_serving() {
    let hub = Hub::start_mqtt().await;
    push_with_reference(&hub, 1).await;
    let a = device(&hub, "shop-a").await;
    let b = device(&hub, "shop-b").await;
    let http = client();
    let b_dir = b.stop().await;
    let b_key = SecretKey::from_pem(
        &std::fs::read_to_string(b_dir.path().join("device.key")).expect("key"),
    )
    .expect("pem");
    let stranger = SecretKey::generate().expect("key");
    let signed = |r: &TelemetryRecord, k: &SecretKey| {
        pack_record(
            &Signed::sign(r, k, None)
                .and_then(|s| s.to_bytes())
                .expect("sign"),
        )
    };
    let signed_batch = |b: &SampleBatch, k: &SecretKey| {
        pack_record(
            &Signed::sign(b, k, None)
                .and_then(|s| s.to_bytes())
                .expect("sign"),
        )
    };
    let mut wide = sample_batch("shop-b", MODEL);
    wide.rows[0].inputs.push(3.0);
    let max = hub.config.max_telemetry_bytes as usize;
    publish_raw(
        &hub.mqtt_url(),
        vec![
            // shop-b's key, shop-a's name and topic: a spoof.
            (
                topic::telemetry("shop-a"),
                signed(&record("shop-a", 1), &b_key),
            ),
            // shop-b's own record, published under shop-a's topic.
            (
                topic::telemetry("shop-a"),
                signed(&record("shop-b", 1), &b_key),
            ),
            (topic::telemetry("shop-a"), b"garbage".to_vec()),
            // shop-b's own records, but of a model the hub does not have, and with columns
            // the manifest does not name (it would set the hour's schema for everyone).
            (
                topic::telemetry("shop-b"),
                signed(&ghost_model("shop-b"), &b_key),
            ),
            (
                topic::telemetry("shop-b"),
                signed(&wrong_columns("shop-b"), &b_key),
            ),
            (topic::telemetry("shop-a"), vec![0u8; max + 1]),
            // Small on the wire, far over the limit inflated.
            (
                topic::telemetry("shop-a"),
                pack_record(&vec![0u8; 16 * max]),
            ),
            (
                topic::telemetry("nobody"),
                signed(&record("nobody", 1), &stranger),
            ),
            (topic::health("shop-a"), b"\x01\x02".to_vec()),
            // Training samples: garbage, a spoof, an unknown model, rows wider than their
            // columns, and one over the size bound.
            (topic::samples("shop-a"), b"garbage".to_vec()),
            (
                topic::samples("shop-a"),
                signed_batch(&sample_batch("shop-a", MODEL), &b_key),
            ),
            (
                topic::samples("shop-b"),
                signed_batch(&sample_batch("shop-b", "ghost"), &b_key),
            ),
            (topic::samples("shop-b"), signed_batch(&wide, &b_key)),
            (topic::samples("shop-b"), vec![0u8; max + 1]),
            ("edgefleet/v1/devices/shop-a/other".into(), b"x".to_vec()),
        ],
    )
    .await;
    let fleet = eventually("the refusals to be counted", || async {
        let f = get(&hub, "fleet/metrics").await;
        let r = &f["ingest"]["rejected"];
        let counted = r["bad_signature"].as_u64() >= Some(3)
            && r["malformed"].as_u64() >= Some(4)
            && r["oversize"].as_u64() >= Some(3)
            && r["unknown_device"].as_u64() >= Some(1)
            && r["unknown_model"].as_u64() >= Some(3);
        when(counted, f)
    })
    .await;
    // The subscription is to …/telemetry, …/samples and …/health only: other leaves never
    // arrive.
    assert_eq!(
        fleet["ingest"]["stored"], 0,
        "nothing forged was stored: {fleet}"
    );
    let samples = get(&hub, "models/demand/samples").await;
    assert_eq!(samples["rows"], 0, "no forged sample was stored: {samples}");
    // Still serving, still ingesting the real device.
    send(&http, &a.url, 3, 0.0).await;
    eventually("the real device's window", || async {
        let d = get(&hub, "devices/shop-a").await;
        found(d["telemetry"]["seq"].as_u64(), &d)
    })
    .await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_outbox_drops_the_oldest_and_the_hub_hears_of_it() {
    let hub = Hub::start_mqtt().await;
    push_with_reference(&hub, 1).await;
    hub.assign("shop-full", MODEL, 1).await;
    // No broker where the agent looks: every window stays in the 16 KiB outbox.
    let dark = free_addr();
    let agent = Agent::start_with(&hub, "shop-full", tempfile::tempdir().expect("tmp"), |c| {
        fast_telemetry(c);
        c.mqtt_url = format!("mqtt://{dark}");
        c.outbox_max_bytes = 16 * 1024;
    })
    .await;
    let http = client();
    serve_model(&agent, &http).await;
    // Each window's record is a few KiB: after ~15 windows the first ones had to go.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let dir = loop {
        send(&http, &agent.url, 2, 0.0).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let metrics = http
            .get(format!("{}/metrics", agent.url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        if metrics
            .lines()
            .any(|l| l.starts_with("edgefleet_agent_outbox_dropped_total") && !l.ends_with(" 0"))
        {
            break agent.stop().await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no drop counted: {metrics}"
        );
    };
    let outbox = open_outbox(&dir.path().join("outbox"), 16 * 1024).await;
    let stats = outbox.stats();
    assert!(
        stats.dropped >= 1 && stats.queued_bytes <= 16 * 1024,
        "{stats:?}"
    );
    let pending = outbox.pending(0, 1000).expect("pending");
    let first = pending.first().expect("records kept").0;
    assert!(
        first > stats.dropped,
        "the oldest went first: {first} after {stats:?}"
    );
    drop(outbox);
    // Back on the hub's broker: what was kept arrives, with the drop count.
    let agent = Agent::start_with(&hub, "shop-full", dir, fast_telemetry).await;
    // The heartbeat (which carries the drop count) may land before the queued windows do.
    eventually(
        "the drops and the kept windows reported to the hub",
        || async {
            let d = get(&hub, "devices/shop-full").await;
            when(
                d["outbox_dropped"].as_u64() >= Some(1) && d["telemetry"]["seq"].as_u64() > Some(0),
                d,
            )
        },
    )
    .await;
    agent.stop().await;
}

/// The outbox of a stopped agent (sled lets go of its lock a moment after the last handle).
async fn open_outbox(path: &std::path::Path, max: u64) -> edgefleet_agent::telemetry::Outbox {
    eventually("the outbox to be free", || async {
        edgefleet_agent::telemetry::Outbox::open(path, max).map_err(|e| e.to_string())
    })
    .await
}

/// Starts `mosquitto` on `port` (foreground, its own process), if the binary exists.
fn mosquitto(port: u16) -> Option<tokio::process::Child> {
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    tokio::process::Command::new(bin)
        .args(["-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_external_mosquitto_restart_loses_nothing() {
    let port = free_addr().port();
    let Some(mut broker) = mosquitto(port) else {
        panic!("mosquitto is not installed: tests/run.sh installs it (apt-get install mosquitto)");
    };
    let url = format!("mqtt://127.0.0.1:{port}");
    eventually("mosquitto to listen", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await
    })
    .await;
    let hub = Hub::start_with(|c| {
        c.mqtt_enabled = true;
        c.mqtt_url = Some(url.clone());
    })
    .await;
    push_with_reference(&hub, 1).await;
    let agent = device(&hub, "shop-m").await;
    let http = client();
    send(&http, &agent.url, 5, 0.0).await;
    eventually("a first window through mosquitto", || async {
        let d = get(&hub, "devices/shop-m").await;
        found(d["telemetry"]["seq"].as_u64(), &d)
    })
    .await;
    // The broker goes away while windows keep closing.
    broker.kill().await.expect("kill mosquitto");
    for _ in 0..4 {
        send(&http, &agent.url, 3, 0.0).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let mut broker = mosquitto(port).expect("mosquitto again");
    send(&http, &agent.url, 3, 0.0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seq = wait_all_stored_once(&hub, "shop-m").await;
    assert!(
        seq >= 4,
        "windows before, during and after the outage: {seq}"
    );
    agent.stop().await;
    broker.kill().await.expect("kill mosquitto");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_machines_mosquitto_on_1883_carries_telemetry_when_it_runs() {
    if tokio::net::TcpStream::connect("127.0.0.1:1883")
        .await
        .is_err()
    {
        eprintln!(
            "SKIPPED the Mosquitto interop run: no MQTT broker at 127.0.0.1:1883 (tests/run.sh starts one)"
        );
        return;
    }
    let hub = Hub::start_with(|c| {
        c.mqtt_enabled = true;
        c.mqtt_url = Some("mqtt://127.0.0.1:1883".into());
    })
    .await;
    push_with_reference(&hub, 1).await;
    // A device id of its own: the broker is shared with whatever else runs on the machine.
    let id = format!("shop-{}", hex::encode(now().to_be_bytes()));
    let agent = device(&hub, &id).await;
    let http = client();
    send(&http, &agent.url, 5, 0.0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    wait_all_stored_once(&hub, &id).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hub_killed_with_kill_9_gets_the_records_again_and_stores_them_once() {
    let fixture = Hub::start().await;
    let (http_addr, mqtt_addr) = (free_addr(), free_addr());
    let data = tempfile::tempdir().expect("tmp");
    let spawn_hub = || spawn_hub_binary(&fixture, http_addr, mqtt_addr, data.path());
    let url = format!("http://{http_addr}");
    let wait_up = || wait_hub_up(&url);
    let process = spawn_hub();
    wait_up().await;
    let config = edgefleet_hub::HubConfig {
        mqtt_enabled: true,
        mqtt_listen: mqtt_addr,
        ..fixture.config.clone()
    };
    let hub = Hub::attach(&fixture, url.clone(), data.path(), config);
    push_with_reference(&hub, 1).await;
    let agent = device(&hub, "shop-k").await;
    let http = client();
    // Windows flow; the hub dies mid-stream, between receiving some records and acking them.
    for _ in 0..3 {
        send(&http, &agent.url, 3, 0.0).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eventually("records stored before the kill", || async {
        let d = get(&hub, "devices/shop-k").await;
        found(d["telemetry"]["seq"].as_u64(), &d)
    })
    .await;
    send(&http, &agent.url, 3, 0.0).await;
    process.kill9().await;
    for _ in 0..3 {
        send(&http, &agent.url, 3, 0.0).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let process = spawn_hub();
    wait_up().await;
    let seq = wait_all_stored_once(&hub, "shop-k").await;
    assert!(seq >= 3, "{seq}");
    agent.stop().await;
    process.kill9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_killed_with_kill_9_delivers_its_outbox_after_restart() {
    let hub = Hub::start_mqtt().await;
    push_with_reference(&hub, 1).await;
    hub.assign("shop-9", MODEL, 1).await;
    let dir = tempfile::tempdir().expect("tmp");
    let spawn = |mqtt: String| {
        let mut cmd = tokio::process::Command::new(bin("edgefleet-agent"));
        cmd.arg("run")
            .env("EDGEFLEET_AGENT_DEVICE_ID", "shop-9")
            .env("EDGEFLEET_AGENT_HUB_URL", &hub.url)
            .env("EDGEFLEET_AGENT_DATA_DIR", dir.path())
            .env("EDGEFLEET_AGENT_ROOT_KEY", &hub.root_pub_path)
            .env("EDGEFLEET_AGENT_ENROLLMENT_TOKEN", ENROLL_TOKEN)
            .env("EDGEFLEET_AGENT_LISTEN", "127.0.0.1:0")
            .env("EDGEFLEET_AGENT_POLL_INTERVAL_SECS", "2")
            .env("EDGEFLEET_AGENT_MQTT_URL", mqtt)
            .env("EDGEFLEET_AGENT_TELEMETRY_WINDOW_SECS", "1")
            .env("EDGEFLEET_AGENT_HEARTBEAT_SECS", "1")
            .env("EDGEFLEET_AGENT_TELEMETRY_RESEND_SECS", "2")
            .env("EDGEFLEET_LOG", "info");
        AgentProcess::spawn_command(cmd)
    };
    // First run: the broker it is told about is not there, so records only pile up.
    let mut first = spawn(format!("mqtt://{}", free_addr()));
    let url = first.wait_listening().await;
    let http = client();
    eventually("the model served", || async {
        infer_ok(&http, &url, MODEL, &traffic(1, 9, 0.0)).await
    })
    .await;
    for _ in 0..3 {
        send(&http, &url, 3, 0.0).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    first.kill9().await;
    let outbox = open_outbox(&dir.path().join("outbox"), 64 << 20).await;
    let queued = outbox.stats().queued;
    assert!(queued >= 2, "records waiting: {queued}");
    drop(outbox);
    let second = spawn(hub.mqtt_url());
    let seq = wait_all_stored_once(&hub, "shop-9").await;
    assert!(seq >= queued, "{seq} < {queued}");
    eventually("a heartbeat saying online", || async {
        let d = get(&hub, "devices/shop-9").await;
        when(d["online"] == true, d)
    })
    .await;
    // kill -9 closes no MQTT session cleanly: the broker publishes the device's last will.
    second.kill9().await;
    eventually("the last will to mark the device offline", || async {
        let d = get(&hub, "devices/shop-9").await;
        when(d["online"] == false && d["liveness"]["online"] == false, d)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_mqtt_port_is_an_error_that_says_what_to_do() {
    let fixture = Hub::start().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let data = tempfile::tempdir().expect("tmp");
    let out = tokio::process::Command::new(bin("edgefleet-hub"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            &addr.to_string(),
            "--data-dir",
        ])
        .arg(data.path())
        .env("EDGEFLEET_HUB_ROOT_KEY", &fixture.root_pub_path)
        .env("EDGEFLEET_HUB_SIGNING_KEY", &fixture.config.signing_key)
        .env("EDGEFLEET_HUB_DELEGATION", &fixture.config.delegation)
        .output()
        .await
        .expect("run the hub");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for needle in ["port is taken", "--mqtt-listen", "--mqtt-url"] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    drop(taken);
}

/// Sends `batches` requests of 20 rows and checks that `version` answered each.
async fn send_to(http: &reqwest::Client, url: &str, batches: u64, version: u64) {
    for i in 0..batches {
        let answer = infer_ok(http, url, MODEL, &traffic(20, 100 + i, 0.0)).await;
        assert_eq!(
            answer.map(|(v, _)| v),
            Some(version),
            "request {i}: answered by"
        );
    }
}

/// Waits until the agent serves `version`, without sending an inference (which would count in
/// a window, and could race the swap).
async fn wait_ready(http: &reqwest::Client, url: &str, version: u64) {
    eventually(&format!("v{version} ready"), || async {
        let r = http
            .get(format!("{url}/v2/models/{MODEL}/versions/{version}/ready"))
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(r.status().to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_mid_window_reports_both_versions() {
    const V1_REQUESTS: u64 = 5;
    const V2_REQUESTS: u64 = 7;
    let hub = Hub::start_mqtt().await;
    push_with_reference(&hub, 1).await;
    hub.assign("shop-u", MODEL, 1).await;
    // A window no clock closes during the test (a day): the agent's clean stop closes it,
    // after the swap, so the swap is inside it however slow the machine is.
    let one_window = |c: &mut edgefleet_agent::AgentConfig| {
        fast_telemetry(c);
        c.telemetry_window_secs = 86_400;
    };
    let opened = now();
    let agent = Agent::start_with(
        &hub,
        "shop-u",
        tempfile::tempdir().expect("tmp"),
        one_window,
    )
    .await;
    let http = client();
    wait_ready(&http, &agent.url, 1).await;
    let first_request = now();
    send_to(&http, &agent.url, V1_REQUESTS, 1).await;
    push_with_reference(&hub, 2).await;
    hub.assign("shop-u", MODEL, 2).await;
    wait_ready(&http, &agent.url, 2).await;
    send_to(&http, &agent.url, V2_REQUESTS, 2).await;
    let last_request = now();
    let dir = agent.stop().await;
    let closed = now();

    // The stop closed the one window into one record, still in the outbox (never published).
    let outbox = open_outbox(&dir.path().join("outbox"), 64 << 20).await;
    let pending: Vec<u64> = outbox
        .pending(0, 100)
        .expect("pending")
        .into_iter()
        .map(|(seq, _)| seq)
        .collect();
    assert_eq!(pending, [1], "one record for the window");
    drop(outbox);

    // Restarted, the agent delivers it.
    let agent = Agent::start_with(&hub, "shop-u", dir, one_window).await;
    let d = eventually("the record at the hub", || async {
        let d = get(&hub, "devices/shop-u").await;
        when(d["telemetry"]["seq"] == 1, d)
    })
    .await;
    let t = &d["telemetry"];
    // (i) The window spans the requests of both versions: the swap happened inside it.
    let (start, end) = (
        t["window_start"].as_u64().expect("window_start"),
        t["window_end"].as_u64().expect("window_end"),
    );
    assert!(
        opened <= start && start <= first_request,
        "the window opened with v1 ({opened}..={first_request}): {d}"
    );
    assert!(
        last_request <= end && end <= closed,
        "the window closed after v2's last request ({last_request}..={closed}): {d}"
    );
    // (ii) One record (seq 1) carries a window per version, with the requests each served.
    let models: Vec<(String, u64, u64, u64)> = t["models"]
        .as_array()
        .unwrap_or_else(|| panic!("no models: {d}"))
        .iter()
        .map(|m| {
            (
                m["model"].as_str().unwrap_or_default().to_owned(),
                m["version"].as_u64().unwrap_or_default(),
                m["requests"].as_u64().unwrap_or_default(),
                m["errors"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        models,
        [
            (MODEL.to_owned(), 1, V1_REQUESTS, 0),
            (MODEL.to_owned(), 2, V2_REQUESTS, 0)
        ],
        "{d}"
    );
    // The fleet aggregates: one window per version, from that record, nothing refused.
    for (version, requests) in [(1, V1_REQUESTS), (2, V2_REQUESTS)] {
        let drift = get(&hub, &format!("models/{MODEL}/versions/{version}/drift")).await;
        assert_eq!(
            (drift["windows"].as_u64(), drift["requests"].as_u64()),
            (Some(1), Some(requests)),
            "v{version}: {drift}"
        );
    }
    // The counter moves just after the commit the device detail shows.
    let fleet = eventually("the record counted", || async {
        let f = get(&hub, "fleet/metrics").await;
        when(f["ingest"]["stored"].as_u64() >= Some(1), f)
    })
    .await;
    assert_eq!(fleet["ingest"]["stored"], 1, "one record stored: {fleet}");
    assert_eq!(fleet["ingest"]["rejected"]["malformed"], 0, "{fleet}");
    assert_eq!(fleet["ingest"]["rejected"]["unknown_model"], 0, "{fleet}");
    agent.stop().await;
}
