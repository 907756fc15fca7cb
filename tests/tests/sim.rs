//! The fleet simulator (`edgefleet-sim`) against a real in-process hub with its embedded
//! broker: 50 simulated devices enroll, install what they are assigned, move with the
//! assignment, send signed telemetry the hub stores, and fail installs as the fault profile
//! says.

mod support;

use edgefleet_sim::{Fleet, SimConfig, Snapshot};
use serde_json::{Value, json};
use support::{ENROLL_TOKEN, Hub, Seen, eventually, when};

const DEVICES: u32 = 50;

/// A hub with MQTT, `demand` v1 and v2 pushed, v1 assigned to the tag `shops`.
async fn hub() -> Hub {
    let hub = Hub::start_mqtt().await;
    hub.push_mlp("demand", 1, 1).await;
    hub.push_mlp("demand", 2, 2).await;
    assign_tag(&hub, 1).await;
    hub
}

async fn assign_tag(hub: &Hub, version: u64) {
    let r = hub
        .http
        .post(hub.api("assignments"))
        .bearer_auth(&hub.token)
        .json(&json!({"target": {"tag": "shops"}, "model": "demand", "version": version}))
        .send()
        .await
        .expect("assign");
    assert!(r.status().is_success(), "assign v{version}: {}", r.status());
}

fn config(hub: &Hub, tweak: impl FnOnce(&mut SimConfig)) -> SimConfig {
    let mut c = SimConfig::new(
        &hub.url,
        &hub.mqtt_url(),
        hub.root_pub_path.clone(),
        DEVICES,
    );
    c.tags = vec!["shops".into()];
    c.enroll_token = Some(ENROLL_TOKEN.into());
    c.seed = 7;
    c.rate = 20.0;
    c.window_secs = 1;
    c.poll_secs = 5;
    c.report_every = 0;
    tweak(&mut c);
    c
}

async fn get(hub: &Hub, path: &str) -> Result<Value, Seen> {
    let r = hub
        .http
        .get(hub.api(path))
        .bearer_auth(&hub.token)
        .send()
        .await
        .map_err(|e| Seen(Value::String(format!("GET {path}: {e}"))))?;
    r.json()
        .await
        .map_err(|e| Seen(Value::String(format!("GET {path}: {e}"))))
}

/// The hub's device list: how many report `demand` `version` active, and how many report an
/// error naming `needle`.
async fn hub_counts(hub: &Hub, version: u64, needle: &str) -> Result<(usize, usize), Seen> {
    let list = get(hub, "devices").await?;
    let devices = list.as_array().ok_or_else(|| Seen(list.clone()))?;
    let active = devices
        .iter()
        .filter(|d| {
            d["status"]["active"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|m| m["name"] == "demand" && m["version"] == version)
            })
        })
        .count();
    let failed = devices
        .iter()
        .filter(|d| {
            d["status"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(needle))
        })
        .count();
    Ok((active, failed))
}

fn seen(s: &Snapshot) -> Seen {
    Seen(Value::String(s.to_string()))
}

async fn all_on(fleet: &Fleet, version: u64) -> Snapshot {
    eventually(
        &format!("all {DEVICES} simulated devices on demand v{version}"),
        || async {
            let s = fleet.snapshot();
            if s.enrolled == u64::from(DEVICES) && s.active("demand", version) == u64::from(DEVICES)
            {
                Ok(s)
            } else {
                Err(seen(&s))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_devices_enroll_install_move_and_send_signed_telemetry() {
    let mut hub = hub().await;
    let fleet = Fleet::start(config(&hub, |c| {
        c.error_version = Some(2);
        c.error_rate = Some(0.3);
    }))
    .await
    .expect("fleet");
    all_on(&fleet, 1).await;
    eventually("the hub to see 50 devices on v1", || async {
        let (active, _) = hub_counts(&hub, 1, "demand").await?;
        when(active == DEVICES as usize, json!(active))
    })
    .await;

    // Signed telemetry through the outboxes: stored and acked, visible in the fleet metrics
    // and on each device.
    let fleet_metrics = eventually("telemetry of demand v1 at the hub", || async {
        let f = get(&hub, "fleet/metrics").await?;
        let requests = f["models"]
            .as_array()
            .and_then(|m| {
                m.iter()
                    .find(|r| r["model"] == "demand" && r["version"] == 1)
            })
            .and_then(|r| r["requests"].as_u64())
            .unwrap_or(0);
        when(
            requests >= 100 && f["ingest"]["stored"].as_u64() >= Some(50),
            f,
        )
    })
    .await;
    let rejected = fleet_metrics["ingest"]["rejected"]
        .as_object()
        .expect("rejected");
    assert!(
        rejected.values().all(|n| n == 0),
        "nothing refused: {fleet_metrics}"
    );
    let detail = eventually("a device's latest window", || async {
        let d = get(&hub, "devices/sim-00000").await?;
        when(d["telemetry"].is_object() && d["online"] == true, d)
    })
    .await;
    assert_eq!(detail["liveness"]["active"][0]["version"], 1, "{detail}");
    eventually("acks back in the outboxes", || async {
        let s = fleet.snapshot();
        if s.records_acked >= 50 {
            Ok(s)
        } else {
            Err(seen(&s))
        }
    })
    .await;

    // A version change moves every device, v1 kept as the previous version.
    assign_tag(&hub, 2).await;
    all_on(&fleet, 2).await;
    let d = eventually("the hub to see 50 devices on v2", || async {
        let (active, _) = hub_counts(&hub, 2, "demand").await?;
        when(active == DEVICES as usize, json!(active))
    })
    .await;
    assert_eq!(d, json!(DEVICES));
    let one = get(&hub, "devices/sim-00049").await.expect("device");
    assert_eq!(one["status"]["previous"][0]["version"], 1, "{one}");
    assert_eq!(one["status"]["last_error"], Value::Null, "{one}");

    // v2 answers with more errors (the fault profile), and the hub's report shows it.
    let report = eventually("the hub's report of v2's error rate", || async {
        let f = get(&hub, "fleet/metrics").await?;
        let v2 = f["models"]
            .as_array()
            .and_then(|m| {
                m.iter()
                    .find(|r| r["model"] == "demand" && r["version"] == 2)
            })
            .cloned()
            .unwrap_or(Value::Null);
        when(v2["requests"].as_u64() >= Some(300), v2)
    })
    .await;
    let rate = report["error_rate"].as_f64().expect("error rate");
    assert!((0.2..0.4).contains(&rate), "v2 error rate {rate}: {report}");

    let last = fleet.stop().await;
    assert!(last.records_sent >= last.records_acked, "{last}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fault_profile_fails_installs_on_exactly_the_chosen_fraction() {
    let mut hub = hub().await;
    let fleet = Fleet::start(config(&hub, |c| {
        c.fail_install_version = Some(2);
        c.fail_install_fraction = Some(0.5);
    }))
    .await
    .expect("fleet");
    all_on(&fleet, 1).await;
    assign_tag(&hub, 2).await;
    let s = eventually("half the devices on v2, half failing", || async {
        let s = fleet.snapshot();
        if s.active("demand", 2) == 25 && s.active("demand", 1) == 25 && s.failing == 25 {
            Ok(s)
        } else {
            Err(seen(&s))
        }
    })
    .await;
    assert_eq!(s.enrolled, u64::from(DEVICES), "{s}");
    let (on_v1, failed) = eventually("the hub to see 25 failed installs", || async {
        let (on_v1, failed) = hub_counts(&hub, 1, "model demand v2: smoke test 0 failed").await?;
        when(failed == 25 && on_v1 == 25, json!([on_v1, failed])).map(|_| (on_v1, failed))
    })
    .await;
    assert_eq!((on_v1, failed), (25, 25));
    // A staged rollout would count them against the wave (rollout::device_progress).
    fleet.stop().await;
    hub.stop().await;
}

/// The gate catches a bad version: v2 answers 30 % errors (the fault profile). Wave 1's
/// canaries and an equal baseline get 5 s windows for the bake, the error-rate gate compares
/// them, fails, and the rollback brings every device back to v1. Prints the gate decision
/// latency (end of the bake → rolling back).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_with_more_errors_fails_its_gate_and_the_fleet_rolls_back() {
    let hub = hub().await;
    let fleet = Fleet::start(config(&hub, |c| {
        // Long windows of their own: only the bake's instruction makes them short.
        c.window_secs = 600;
        c.error_version = Some(2);
        c.error_rate = Some(0.3);
    }))
    .await
    .expect("fleet");
    all_on(&fleet, 1).await;
    let bake = 8;
    let r = hub
        .http
        .post(hub.api("rollouts"))
        .bearer_auth(&hub.token)
        .json(&json!({
            "model": "demand", "version": 2, "selector": {"tags": ["shops"]},
            "waves": [{"devices": 5}, {"percent": 100.0}],
            "bake_secs": bake, "bake_window_secs": 5,
            "gates": {"min_devices": 3, "min_requests": 200},
        }))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_u64()
        .expect("id");
    let done = eventually("the rollout rolled back by its error-rate gate", || async {
        let v = get(&hub, &format!("rollouts/{id}")).await?;
        when(v["state"] == "rolled_back", v)
    })
    .await;
    let wave = &done["waves"][0];
    let error_gate = wave["verdicts"]
        .as_array()
        .and_then(|v| v.iter().find(|g| g["gate"] == "error_rate"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(error_gate["outcome"], "fail", "{done}");
    assert!(
        error_gate["canary"].as_f64() > Some(0.2) && error_gate["baseline"].as_f64() < Some(0.05),
        "{error_gate}"
    );
    assert_eq!(done["progress"][1]["targeted"], 0, "wave 2 never started");
    // Gate decision latency: from the end of the bake to the failure's audit entry.
    let audit = get(&hub, &format!("rollouts/{id}/audit"))
        .await
        .expect("audit");
    let failed_at = audit
        .as_array()
        .and_then(|a| a.iter().find(|e| e["to"] == "rolling_back"))
        .and_then(|e| e["at"].as_u64())
        .expect("a rolling-back entry");
    let bake_end = wave["baking_since"].as_u64().expect("baked") + bake;
    println!(
        "gate decision latency: {} s after the end of the bake (the bake may be extended while inconclusive)",
        failed_at.saturating_sub(bake_end)
    );
    // Every device is back on v1.
    all_on(&fleet, 1).await;
    let s = fleet.stop().await;
    assert!(s.records_acked > 0, "{s}");
}

/// A rollout of 1,000 simulated devices (one MQTT connection each) to 100 %, in three waves
/// with no bake: every device ends on v2 and the rollout succeeds. (The timed run is
/// `sim/bench.sh`; BENCHMARKS.md has its figures.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_simulated_devices_roll_out_to_one_hundred_percent() {
    const N: u64 = 1000;
    let hub = hub().await;
    let fleet = Fleet::start(config(&hub, |c| {
        c.devices = N as u32;
        c.rate = 1.0;
        c.window_secs = 60;
        c.poll_secs = 60;
    }))
    .await
    .expect("fleet");
    let on = |version: u64| {
        let fleet = &fleet;
        async move {
            eventually(&format!("{N} devices on v{version}"), || async {
                let s = fleet.snapshot();
                if s.active("demand", version) == N {
                    Ok(s)
                } else {
                    Err(seen(&s))
                }
            })
            .await
        }
    };
    on(1).await;
    let started = std::time::Instant::now();
    let r = hub
        .http
        .post(hub.api("rollouts"))
        .bearer_auth(&hub.token)
        .json(&json!({
            "model": "demand", "version": 2, "selector": {"tags": ["shops"]},
            "waves": [{"devices": 1}, {"percent": 50.0}, {"percent": 100.0}], "bake_secs": 0,
        }))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_u64()
        .expect("id");
    on(2).await;
    let done = eventually("the rollout succeeded", || async {
        let v = get(&hub, &format!("rollouts/{id}")).await?;
        when(v["state"] == "succeeded", v)
    })
    .await;
    println!(
        "{N} simulated devices (debug build) to 100 %: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(done["progress"][2]["reach"], N, "{done}");
    fleet.stop().await;
}

/// The latency gate catches a slow version: v2 answers 4× slower (the fault profile); the
/// p95 ratio of canaries to baseline fails the gate and the fleet rolls back to v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slower_version_fails_its_latency_gate_and_the_fleet_rolls_back() {
    let hub = hub().await;
    let fleet = Fleet::start(config(&hub, |c| {
        c.window_secs = 600;
        c.slow_version = Some(2);
        c.slow_factor = Some(4.0);
    }))
    .await
    .expect("fleet");
    all_on(&fleet, 1).await;
    let r = hub
        .http
        .post(hub.api("rollouts"))
        .bearer_auth(&hub.token)
        .json(&json!({
            "model": "demand", "version": 2, "selector": {"tags": ["shops"]},
            "waves": [{"devices": 5}, {"percent": 100.0}],
            "bake_secs": 8, "bake_window_secs": 5,
            "gates": {"min_devices": 3, "min_requests": 200},
        }))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_u64()
        .expect("id");
    let done = eventually("the rollout rolled back by its latency gate", || async {
        let v = get(&hub, &format!("rollouts/{id}")).await?;
        when(v["state"] == "rolled_back", v)
    })
    .await;
    let gate = done["waves"][0]["verdicts"]
        .as_array()
        .and_then(|v| v.iter().find(|g| g["gate"] == "latency_p95"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(gate["outcome"], "fail", "{done}");
    let (c, b) = (
        gate["canary"].as_f64().unwrap_or(0.0),
        gate["baseline"].as_f64().unwrap_or(f64::MAX),
    );
    assert!(
        c > 2.0 * b,
        "canary p95 {c} ms against baseline {b} ms: {gate}"
    );
    all_on(&fleet, 1).await;
    fleet.stop().await;
}

/// Input shifts and simulated ground truth: a version with a training reference (every
/// feature uniform on [0, 1]); the devices' requests come from it and their truth is close to
/// the prediction, until `fuel_price` moves by 2. Then the hub sees `fuel_price` drift from
/// the reference, and the error the devices report grows with how far outside the training
/// range the inputs fall.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shifted_input_drifts_and_the_simulated_truth_shows_the_error_growing() {
    let mut hub = Hub::start_mqtt().await;
    let dir = tempfile::tempdir().expect("tmp");
    let csv = dir.path().join("train.csv");
    let mut rows = edgefleet_tests::FEATURE_NAMES.join(",") + "\n";
    for i in 0..2_000u64 {
        let cells: Vec<String> = (0..edgefleet_tests::FEATURES as u64)
            .map(|j| format!("{}", ((i * 7919 + j * 104_729) % 1000) as f64 / 1000.0))
            .collect();
        rows += &(cells.join(",") + "\n");
    }
    std::fs::write(&csv, rows).expect("write");
    let profile =
        edgefleet_hub::reference::profile_csv(&csv, None, edgefleet_common::sketch::DEFAULT_K)
            .expect("profile");
    let mlp = edgefleet_tests::Mlp::new(1);
    let artifact = mlp.to_onnx();
    let mut m = hub.manifest("demand", 1, &mlp, &artifact);
    m.reference_profile = Some(profile.to_bytes());
    hub.push(&m, &artifact).await;
    assign_tag(&hub, 1).await;
    let fleet = Fleet::start(config(&hub, |c| {
        c.devices = 10;
        c.feedback = 1.0;
        c.truth_sd = 1.0;
        c.error_per_iqr = 4.0;
    }))
    .await
    .expect("fleet");
    // Before the shift: scored feedback, a small error (|N(0, 1)| averages 0.8), no drift.
    let calm = eventually("feedback of the unshifted world at the hub", || async {
        let d = get(&hub, "models/demand/versions/1/drift").await?;
        when(d["quality"]["matched"].as_u64() >= Some(500), d)
    })
    .await;
    let calm_mae = calm["quality"]["mae"].as_f64().expect("mae");
    assert!((0.5..1.2).contains(&calm_mae), "{calm}");
    assert!(
        !calm["drifted"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "fuel_price")),
        "{calm}"
    );
    fleet.shift("fuel_price", 2.0);
    let shifted = eventually("fuel_price drift and a grown error at the hub", || async {
        let d = get(&hub, "models/demand/versions/1/drift").await?;
        let drifted = d["drifted"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "fuel_price"));
        when(
            drifted && d["quality"]["mae"].as_f64() > Some(3.0 * calm_mae),
            d,
        )
    })
    .await;
    // Only the shifted column drifts.
    assert_eq!(shifted["drifted"], json!(["fuel_price"]), "{shifted}");
    let s = fleet.stop().await;
    assert!(s.feedback >= 500, "{s}");
    hub.stop().await;
}
