//! Staged rollouts with real agents against a real hub: waves to success, a version that
//! fails its smoke tests on the devices stopped at wave one and rolled back, the CLI.

mod support;

use serde_json::{Value, json};
use support::*;

/// `n` agents tagged `shops`, all serving `demand` v1 by a tag assignment; v2 pushed too
/// (`v2` builds and pushes it).
async fn fleet(hub: &Hub, n: usize) -> Vec<Agent> {
    fleet_with(hub, n, |_, _| {}).await
}

/// [`fleet`], each agent's config tweaked by `tweak(i, config)` first.
async fn fleet_with(
    hub: &Hub,
    n: usize,
    tweak: impl Fn(usize, &mut edgefleet_agent::AgentConfig),
) -> Vec<Agent> {
    hub.push_mlp("demand", 1, 1).await;
    let r = hub
        .http
        .post(hub.api("assignments"))
        .bearer_auth(&hub.token)
        .json(&json!({"target": {"tag": "shops"}, "model": "demand", "version": 1}))
        .send()
        .await
        .expect("assign");
    assert_eq!(r.status(), 200);
    let mut agents = Vec::new();
    for i in 0..n {
        let dir = tempfile::tempdir().expect("tmp");
        agents.push(
            Agent::start_with(hub, &format!("shop-{i}"), dir, |c| {
                c.tags = vec!["shops".into()];
                tweak(i, c);
            })
            .await,
        );
    }
    for i in 0..n {
        eventually(&format!("shop-{i} serving v1"), || serving(hub, i, 1)).await;
    }
    agents
}

/// Whether device `i` reports `demand` `version` active.
async fn serving(hub: &Hub, i: usize, version: u64) -> Result<(), Seen> {
    let d = hub.try_device(&format!("shop-{i}")).await?;
    let active = d["status"]["active"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let on = active
        .iter()
        .any(|m| m["name"] == "demand" && m["version"] == version);
    when(on, d).map(|_| ())
}

async fn rollout(hub: &Hub, id: u64) -> Result<Value, Seen> {
    let r = hub
        .http
        .get(hub.api(&format!("rollouts/{id}")))
        .bearer_auth(&hub.token)
        .send()
        .await
        .map_err(|e| Seen(Value::String(e.to_string())))?;
    r.json()
        .await
        .map_err(|e| Seen(Value::String(e.to_string())))
}

/// Polls the rollout until its state is `want`.
async fn wait_state(hub: &Hub, id: u64, want: &str) -> Value {
    eventually(&format!("rollout {id} {want}"), || async {
        let v = rollout(hub, id).await?;
        when(v["state"] == want, v)
    })
    .await
}

async fn create(hub: &Hub, spec: Value) -> (u16, Value) {
    let r = hub
        .http
        .post(hub.api("rollouts"))
        .bearer_auth(&hub.token)
        .json(&spec)
        .send()
        .await
        .expect("create");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_agents_move_to_the_new_version_in_three_waves() {
    const N: usize = 20;
    let hub = Hub::start().await;
    let agents = fleet(&hub, N).await;
    hub.push_mlp("demand", 2, 2).await;
    // Created with the CLI, as an operator would.
    let out = tokio::process::Command::new(bin("edgefleet"))
        .args(["--hub", &hub.url, "--token", &hub.token, "--json"])
        .args(["rollout", "create", "demand", "2", "--tag", "shops"])
        .args(["--waves", "1,50%,100%", "--bake", "0"])
        .output()
        .await
        .expect("edgefleet");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).expect("json");
    let id = created["id"].as_u64().expect("id");
    assert_eq!(created["selected"], N);

    let done = wait_state(&hub, id, "succeeded").await;
    let progress = done["progress"].as_array().expect("progress");
    let reach: Vec<u64> = progress
        .iter()
        .map(|p| p["reach"].as_u64().unwrap_or(0))
        .collect();
    let moved: Vec<u64> = progress
        .iter()
        .map(|p| p["targeted"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(reach, vec![1, 10, 20]);
    assert_eq!(
        moved,
        vec![1, 9, 10],
        "each wave moved only its own devices"
    );
    for p in progress {
        assert_eq!(p["active"], p["targeted"], "{p}");
    }
    for i in 0..N {
        eventually(&format!("shop-{i} serving v2"), || serving(&hub, i, 2)).await;
    }
    // Every wave is in the audit log, started by the timer and passed by its install gate.
    let audit: Value = hub
        .http
        .get(hub.api(&format!("rollouts/{id}/audit")))
        .bearer_auth(&hub.token)
        .send()
        .await
        .expect("audit")
        .json()
        .await
        .expect("json");
    let started = audit
        .as_array()
        .expect("entries")
        .iter()
        .filter(|a| a["detail"].as_str().unwrap_or("").contains("started"))
        .count();
    assert_eq!(started, 3, "{audit}");
    // The CLI shows it for people.
    let out = tokio::process::Command::new(bin("edgefleet"))
        .args(["--hub", &hub.url, "--token", &hub.token])
        .args(["rollout", "status", &id.to_string()])
        .output()
        .await
        .expect("edgefleet");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("succeeded") && text.contains("wave 3"),
        "{text}"
    );
    for a in agents {
        a.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_failing_its_smoke_tests_stops_at_wave_one_and_rolls_back() {
    const N: usize = 6;
    let hub = Hub::start().await;
    let agents = fleet(&hub, N).await;
    // v2's manifest expects numbers the model does not produce: every device refuses it.
    let mlp = edgefleet_tests::Mlp::new(2);
    let artifact = mlp.to_onnx();
    let mut m = hub.manifest("demand", 2, &mlp, &artifact);
    if let edgefleet_common::TensorData::Fp32(v) = &mut m.smoke_tests[0].expected[0].data {
        v[0] += 1.0;
    }
    hub.push(&m, &artifact).await;
    let (status, created) = create(
        &hub,
        json!({"model": "demand", "version": 2, "selector": {"tags": ["shops"]},
               "waves": [{"devices": 2}, {"percent": 100.0}], "bake_secs": 0}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_u64().expect("id");
    let done = wait_state(&hub, id, "rolled_back").await;
    assert!(
        done["reason"].as_str().unwrap_or("").contains("smoke test"),
        "{done}"
    );
    assert_eq!(
        done["moved"].as_object().map(|m| m.len()),
        Some(2),
        "no device outside wave one was moved: {done}"
    );
    assert_eq!(done["progress"][1]["targeted"], 0);
    // Every device serves v1 (the canaries never stopped), and is told to.
    for i in 0..N {
        eventually(&format!("shop-{i} on v1"), || serving(&hub, i, 1)).await;
    }
    let desired: Value = hub
        .http
        .get(hub.api("assignments"))
        .bearer_auth(&hub.token)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert!(
        desired
            .as_array()
            .expect("array")
            .iter()
            .all(|d| d["version"] == 1),
        "{desired}"
    );
    // A second rollout of the same model over the same devices would fight this one: refused
    // while one is active, accepted now that it is over.
    let (status, _) = create(
        &hub,
        json!({"model": "demand", "version": 1, "waves": [{"percent": 100.0}], "bake_secs": 0}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, refused) = create(
        &hub,
        json!({"model": "demand", "version": 1, "selector": {"devices": ["shop-1"]},
               "waves": [{"percent": 100.0}]}),
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or("")
            .contains("supersedes"),
        "{refused}"
    );
    for a in agents {
        a.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_rollout_specs_are_refused_with_every_reason() {
    let hub = Hub::start().await;
    hub.push_mlp("demand", 1, 1).await;
    let (status, body) = create(
        &hub,
        json!({"model": "demand", "version": 1, "waves": [{"percent": 0.0}, {"devices": 3}],
               "gates": {"min_install_ratio": 2.0}, "bake_window_secs": 1,
               "maintenance_windows": [{"from": "25:00", "to": "01:00"}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let e = body["error"].as_str().unwrap_or("");
    for want in [
        "0 %",
        "last wave",
        "min_install_ratio",
        "bake_window_secs",
        "maintenance_windows",
    ] {
        assert!(e.contains(want), "{want} missing: {e}");
    }
    let (status, body) = create(&hub, json!({"model": "demand", "version": 9})).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = create(&hub, json!({"model": "demand", "version": 1, "wavez": []})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("wavez"),
        "{body}"
    );
    // A malformed unassign body is refused, not a crash.
    let r = hub
        .http
        .delete(hub.api("assignments"))
        .bearer_auth(&hub.token)
        .json(&json!({"target": {"planet": "mars"}, "model": "demand"}))
        .send()
        .await
        .expect("unassign");
    assert!(r.status().is_client_error(), "{}", r.status());
    let r = hub
        .http
        .post(hub.api("rollouts/1/explode"))
        .bearer_auth(&hub.token)
        .send()
        .await
        .expect("act");
    assert_eq!(r.status(), 404, "no rollout 1 yet");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_refuses_bad_rollout_arguments_before_calling_the_hub() {
    // No hub listens there: each refusal must come from the CLI's own checks.
    for (args, want) in [
        (vec!["--waves", "1,x%"], "--waves"),
        (vec!["--waves", "1,a"], "--waves"),
        (vec!["--on-failure", "explode"], "--on-failure"),
        (vec!["--bake", "10w"], "10w"),
    ] {
        let out = tokio::process::Command::new(bin("edgefleet"))
            .args(["--hub", "http://127.0.0.1:9", "--token", "t"])
            .args(["rollout", "create", "demand", "2"])
            .args(&args)
            .output()
            .await
            .expect("edgefleet");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(
            !err.contains("cannot reach"),
            "{args:?} reached for the hub: {err}"
        );
    }
}

/// Creates a rollout over the API; returns its id.
async fn create_ok(hub: &Hub, spec: Value) -> u64 {
    let (status, body) = create(hub, spec).await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_u64().expect("id")
}

async fn act(hub: &Hub, id: u64, action: &str) {
    let r = hub
        .http
        .post(hub.api(&format!("rollouts/{id}/{action}")))
        .bearer_auth(&hub.token)
        .send()
        .await
        .expect("act");
    assert!(r.status().is_success(), "{action}: {}", r.status());
}

/// How many of the first `n` devices report `secs` as their telemetry window.
async fn on_window(hub: &Hub, n: usize, secs: u64) -> Result<usize, Seen> {
    let mut count = 0;
    for i in 0..n {
        let d = hub.try_device(&format!("shop-{i}")).await?;
        if d["status"]["window_secs"] == secs {
            count += 1;
        }
    }
    Ok(count)
}

/// While wave 1 bakes, its 2 devices and 2 baseline devices close 5 s windows (the signed
/// instruction in their bundle); pausing returns them to their own window, resuming asks
/// again, and the end of the rollout ends it. Real agents, real hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_baking_wave_and_its_baseline_close_short_windows_until_paused_or_ended() {
    const N: usize = 6;
    let hub = Hub::start().await;
    let agents = fleet(&hub, N).await;
    hub.push_mlp("demand", 2, 2).await;
    let id = create_ok(
        &hub,
        json!({"model": "demand", "version": 2, "selector": {"tags": ["shops"]},
               "waves": [{"devices": 2}, {"percent": 100.0}],
               "bake_secs": 3600, "bake_window_secs": 5}),
    )
    .await;
    let four = |want: usize| {
        let hub = &hub;
        async move {
            eventually(&format!("{want} devices on 5 s windows"), || async {
                let n = on_window(hub, N, 5).await?;
                when(n == want, Value::from(n))
            })
            .await
        }
    };
    // From the wave's start (installing) through its bake.
    four(4).await;
    wait_state(&hub, id, "baking").await;
    four(4).await;
    act(&hub, id, "pause").await;
    four(0).await;
    act(&hub, id, "resume").await;
    four(4).await;
    act(&hub, id, "abort").await;
    four(0).await;
    // The agent's own window is what it reports again.
    let d = hub.try_device("shop-0").await.expect("device");
    assert_eq!(d["status"]["window_secs"], 900, "{d}");
    for a in agents {
        a.stop().await;
    }
}

/// `edgefleet unassign`: the device serves the model for its grace period, then stops and
/// deletes it from disk; its status says `removing` meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unassigned_model_stops_after_its_grace_period_and_is_deleted() {
    let hub = Hub::start().await;
    hub.push_mlp("demand", 1, 1).await;
    hub.assign("shop-r", "demand", 1).await;
    let dir = tempfile::tempdir().expect("tmp");
    let models = dir.path().join("models").join("demand");
    let agent = Agent::start_with(&hub, "shop-r", dir, |c| {
        c.removal_grace_secs = 3600;
        c.time_zone = Some("UTC".into());
    })
    .await;
    let http = client();
    // Waits until the agent at `url` answers `want` for demand's readiness.
    let ready_is = |what: &'static str, url: String, want: u16| {
        let http = http.clone();
        async move {
            eventually(what, || async {
                let s = http
                    .get(format!("{url}/v2/models/demand/ready"))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .map_err(|e| e.to_string())?;
                if s == want {
                    Ok(s)
                } else {
                    Err(format!("ready: {s}"))
                }
            })
            .await
        }
    };
    ready_is("demand served", agent.url.clone(), 200).await;
    assert!(models.exists());
    // Bad input first: nothing to remove, and a bad name.
    let run = |args: &[&str]| {
        tokio::process::Command::new(bin("edgefleet"))
            .args(["--hub", &hub.url, "--token", &hub.token])
            .args(args)
            .output()
    };
    let out = run(&["unassign", "--device", "shop-r", "other"])
        .await
        .expect("cli");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no assignment of other"),
        "{out:?}"
    );
    let out = run(&["unassign", "--device", "../x", "demand"])
        .await
        .expect("cli");
    assert!(!out.status.success());
    let out = run(&["unassign", "--device", "shop-r", "demand"])
        .await
        .expect("cli");
    assert!(out.status.success(), "{out:?}");
    let removing_since = || async {
        let d = hub.try_device("shop-r").await?;
        let since = d["status"]["installs"]
            .as_array()
            .and_then(|i| i.iter().find(|i| i["phase"] == "removing"))
            .map(|i| i["at"].clone());
        found(since, &d)
    };
    let since = eventually("the status says removing", removing_since).await;
    // A restart keeps the grace period's start (it is on disk), not a new one. The restarted
    // agent reports another zone, so the status checked is its own; it restarts in a later
    // second, so a new start would show.
    let started = since.as_u64().expect("since");
    eventually("a later second", || async {
        let t = now();
        when(t > started + 1, json!(t))
    })
    .await;
    let dir = agent.stop().await;
    let agent = Agent::start_with(&hub, "shop-r", dir, |c| {
        c.removal_grace_secs = 3600;
        c.time_zone = Some("Etc/GMT-1".into());
    })
    .await;
    eventually(
        "the restarted agent still removing since the same time",
        || async {
            let d = hub.try_device("shop-r").await?;
            let at = removing_since().await?;
            when(d["status"]["time_zone"] == "Etc/GMT-1" && at == since, d)
        },
    )
    .await;
    ready_is(
        "the restarted agent serves it meanwhile",
        agent.url.clone(),
        200,
    )
    .await;
    // With a 3 s grace, the period that began before the restart has long ended.
    let dir = agent.stop().await;
    let agent = Agent::start_with(&hub, "shop-r", dir, |c| c.removal_grace_secs = 3).await;
    ready_is("demand no longer served", agent.url.clone(), 404).await;
    eventually("demand deleted from disk", || async {
        if models.exists() {
            Err(format!("{} still there", models.display()))
        } else {
            Ok(())
        }
    })
    .await;
    agent.stop().await;
}

/// The hub is killed with kill -9 while wave 1 bakes, and restarted: the rollout resumes
/// where it was and succeeds, each wave started once (no double transitions). A device that
/// joins the tag afterwards gets the new version (the tag carries it after success).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hub_killed_mid_wave_resumes_the_rollout_and_late_joiners_get_the_result() {
    const N: usize = 4;
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
    let agents = fleet(&hub, N).await;
    hub.push_mlp("demand", 2, 2).await;
    // Metric gates that pass on no data: the bake is only a timer here.
    let bake = 6;
    let id = create_ok(
        &hub,
        json!({"model": "demand", "version": 2, "selector": {"tags": ["shops"]},
               "waves": [{"devices": 1}, {"percent": 100.0}], "bake_secs": bake,
               "gates": {"min_devices": 0, "min_requests": 0, "no_baseline": "pass"}}),
    )
    .await;
    wait_state(&hub, id, "baking").await;
    process.kill9().await;
    let process = spawn_hub();
    wait_up().await;
    let done = wait_state(&hub, id, "succeeded").await;
    let audit: Value = hub
        .http
        .get(hub.api(&format!("rollouts/{id}/audit")))
        .bearer_auth(&hub.token)
        .send()
        .await
        .expect("audit")
        .json()
        .await
        .expect("json");
    let entries = audit.as_array().cloned().unwrap_or_default();
    let count = |needle: &str| {
        entries
            .iter()
            .filter(|a| a["detail"].as_str().unwrap_or("").contains(needle))
            .count()
    };
    assert_eq!(count("wave 1 of 2 started"), 1, "{audit}");
    assert_eq!(count("wave 2 of 2 started"), 1, "{audit}");
    assert_eq!(count("wave 1 installed"), 1, "{audit}");
    assert_eq!(done["progress"][1]["active"], 3, "{done}");
    for i in 0..N {
        eventually(&format!("shop-{i} serving v2"), || serving(&hub, i, 2)).await;
    }
    // A late joiner with the tag: the tag carries v2 now.
    let dir = tempfile::tempdir().expect("tmp");
    let late = Agent::start_with(&hub, &format!("shop-{N}"), dir, |c| {
        c.tags = vec!["shops".into()]
    })
    .await;
    eventually("the late joiner serving v2", || serving(&hub, N, 2)).await;
    late.stop().await;
    for a in agents {
        a.stop().await;
    }
    process.kill9().await;
}

/// A device that starts matching the selector while a rollout runs gets the rollout's current
/// decision: here the only wave reaches 100 %, so the joiner is moved to v2 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_joining_mid_rollout_gets_the_current_decision() {
    const N: usize = 3;
    let hub = Hub::start().await;
    let agents = fleet(&hub, N).await;
    hub.push_mlp("demand", 2, 2).await;
    let id = create_ok(
        &hub,
        json!({"model": "demand", "version": 2, "selector": {"tags": ["shops"]},
               "waves": [{"percent": 100.0}], "bake_secs": 3600}),
    )
    .await;
    wait_state(&hub, id, "baking").await;
    let dir = tempfile::tempdir().expect("tmp");
    let late = Agent::start_with(&hub, &format!("shop-{N}"), dir, |c| {
        c.tags = vec!["shops".into()]
    })
    .await;
    eventually("the joiner serving v2", || serving(&hub, N, 2)).await;
    let v = rollout(&hub, id).await.expect("rollout");
    assert!(v["moved"].get(format!("shop-{N}")).is_some(), "{v}");
    act(&hub, id, "abort").await;
    late.stop().await;
    for a in agents {
        a.stop().await;
    }
}

/// A maintenance window in the devices' own zone, with real agents reporting their zone:
/// the device whose window is open moves, the one twelve hours ahead waits, and the wave is
/// not installed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_window_in_the_devices_zone_moves_only_the_device_whose_window_is_open() {
    let hub = Hub::start().await;
    // shop-0 keeps UTC; shop-1 is twelve hours ahead (POSIX signs are inverted).
    let zones = ["UTC", "Etc/GMT-12"];
    let agents = fleet_with(&hub, zones.len(), |i, c| {
        c.time_zone = Some(zones[i].into())
    })
    .await;
    for (i, zone) in zones.iter().enumerate() {
        let hub = &hub;
        eventually(&format!("shop-{i} on v1 in {zone}"), || async move {
            let d = hub.try_device(&format!("shop-{i}")).await?;
            serving(hub, i, 1).await?;
            when(d["status"]["time_zone"] == *zone, d)
        })
        .await;
    }
    hub.push_mlp("demand", 2, 2).await;
    // Open from an hour ago to an hour from now, UTC: closed twelve hours ahead.
    let hour = (now() / 3600) % 24;
    let window = format!("{:02}:00-{:02}:00", (hour + 23) % 24, (hour + 1) % 24);
    let (from, to) = window.split_once('-').expect("range");
    let id = create_ok(
        &hub,
        json!({"model": "demand", "version": 2, "selector": {"tags": ["shops"]},
               "waves": [{"percent": 100.0}], "bake_secs": 0,
               "maintenance_windows": [{"from": from, "to": to, "zone": "device"}]}),
    )
    .await;
    eventually("shop-0 serving v2", || serving(&hub, 0, 2)).await;
    let v = eventually("shop-1 waiting for its window", || async {
        let v = rollout(&hub, id).await?;
        when(v["progress"][0]["waiting"] == 1, v)
    })
    .await;
    assert_eq!(
        v["state"], "running",
        "not installed while a device waits: {v}"
    );
    assert!(v["moved"].get("shop-1").is_none(), "{v}");
    serving(&hub, 1, 1).await.expect("shop-1 still on v1");
    act(&hub, id, "abort").await;
    for a in agents {
        a.stop().await;
    }
}
