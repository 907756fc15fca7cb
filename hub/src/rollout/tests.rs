//! The state machine, stepped by hand with a chosen clock, on a real hub in a temp dir.

use edgefleet_common::Target;
use edgefleet_common::device::{DeviceStatus, ModelRef};

use super::*;
use crate::desired::AssignRequest;
use crate::testkit::Kit;

const FLEET: usize = 10;

fn id(i: usize) -> String {
    format!("shop-{i}")
}

/// A hub with `demand` v1 and v2, FLEET approved devices tagged `eu`, all assigned v1 by tag.
async fn fleet() -> Kit {
    fleet_keys().await.0
}

/// [`fleet`], with the devices' keys (to sign their telemetry).
async fn fleet_keys() -> (Kit, Vec<edgefleet_common::SecretKey>) {
    let kit = Kit::new();
    kit.publish("demand", 1).await;
    kit.publish("demand", 2).await;
    let mut keys = Vec::new();
    for i in 0..FLEET {
        keys.push(kit.enroll(&id(i), &["eu"], true).await);
    }
    kit.hub
        .desired
        .assign(AssignRequest {
            target: Target::Tag("eu".into()),
            model: "demand".into(),
            version: 1,
        })
        .await
        .expect("assign");
    (kit, keys)
}

fn spec(waves: &[&str], bake_secs: u64) -> RolloutSpec {
    RolloutSpec {
        model: "demand".into(),
        version: 2,
        selector: Selector::Tags(vec!["eu".into()]),
        waves: waves
            .iter()
            .map(|w| WaveSize::parse(w).expect("wave"))
            .collect(),
        bake_secs,
        bake_window_secs: 60,
        max_bake_secs: None,
        install_timeout_secs: 900,
        gates: Default::default(),
        on_failure: Policy::Rollback,
        maintenance_windows: vec![],
        supersedes: None,
    }
}

/// What the device reports after an update attempt.
fn report(kit: &Kit, device: &str, version: u64, error: Option<&str>) {
    kit.hub
        .report_status(
            device,
            DeviceStatus {
                active: vec![ModelRef {
                    name: "demand".into(),
                    version,
                }],
                previous: vec![],
                last_error: error.map(str::to_owned),
                agent_version: "test".into(),
                // A device keeps the zone it reported before.
                time_zone: kit
                    .hub
                    .devices
                    .get(device)
                    .expect("read")
                    .and_then(|d| d.time_zone().map(str::to_owned)),
                ..Default::default()
            },
        )
        .expect("report");
}

/// The device reports its time zone (and v1 active).
fn report_zone(kit: &Kit, device: &str, zone: &str) {
    kit.hub
        .report_status(
            device,
            DeviceStatus {
                active: vec![ModelRef {
                    name: "demand".into(),
                    version: 1,
                }],
                agent_version: "test".into(),
                time_zone: Some(zone.into()),
                ..Default::default()
            },
        )
        .expect("report");
}

/// The version each device is told to serve.
fn wanted(kit: &Kit) -> Vec<u64> {
    let all = kit.hub.desired.list().expect("desired");
    (0..FLEET)
        .map(|i| {
            let d = kit.hub.devices.get(&id(i)).expect("read").expect("device");
            crate::desired::resolve_desired(&all, &d)
                .into_iter()
                .find(|m| m.name == "demand")
                .map_or(0, |m| m.version)
        })
        .collect()
}

/// Devices told to serve v2 report it (they installed it).
fn install_wanted(kit: &Kit) {
    for (i, v) in wanted(kit).into_iter().enumerate() {
        report(kit, &id(i), v, None);
    }
}

async fn step(kit: &Kit, now: u64) -> Rollout {
    kit.hub.rollouts.step(now).await.expect("step");
    let all = kit.hub.rollouts.list().expect("list");
    all.last().expect("a rollout").clone()
}

#[tokio::test]
async fn a_rollout_passes_its_waves_to_success_moving_only_each_waves_devices() {
    let kit = fleet().await;
    let r = kit
        .hub
        .rollouts
        .create(spec(&["1", "50%", "100%"], 0))
        .await
        .expect("create");
    assert_eq!(r.state, State::Pending);
    let t = crate::now();
    let r = step(&kit, t).await;
    assert_eq!((r.state, r.wave), (State::Running, 0));
    assert_eq!(
        wanted(&kit).iter().filter(|v| **v == 2).count(),
        1,
        "one canary"
    );
    // Not installed yet: the wave waits.
    assert_eq!(step(&kit, t + 1).await.state, State::Running);
    install_wanted(&kit);
    assert_eq!(step(&kit, t + 2).await.state, State::Baking);
    let r = step(&kit, t + 3).await;
    assert_eq!((r.state, r.wave), (State::Running, 1));
    assert_eq!(
        wanted(&kit).iter().filter(|v| **v == 2).count(),
        5,
        "half the fleet"
    );
    let canary = r
        .moved
        .iter()
        .find(|(_, m)| m.wave == 0)
        .map(|(d, _)| d.clone());
    install_wanted(&kit);
    step(&kit, t + 4).await;
    let r = step(&kit, t + 5).await;
    assert_eq!(r.wave, 2);
    install_wanted(&kit);
    step(&kit, t + 6).await;
    let r = step(&kit, t + 7).await;
    assert_eq!(r.state, State::Succeeded, "{:?}", r.reason);
    assert_eq!(wanted(&kit), vec![2; FLEET]);
    // Membership was kept: the first canary is still the wave-0 device.
    assert_eq!(
        r.moved
            .iter()
            .find(|(_, m)| m.wave == 0)
            .map(|(d, _)| d.clone()),
        canary
    );
    // Every device had only the tag's version: a rollback would remove its own target.
    assert!(r.moved.values().all(|m| m.previous.is_none()));
    let audit = kit.hub.rollouts.audit(r.id).expect("audit");
    assert_eq!(audit.first().map(|a| a.cause.as_str()), Some("created"));
    assert_eq!(audit.last().map(|a| a.to), Some(State::Succeeded));
}

#[tokio::test]
async fn a_failed_install_rolls_back_wave_one_and_touches_no_other_device() {
    let kit = fleet().await;
    kit.hub
        .rollouts
        .create(spec(&["2", "100%"], 0))
        .await
        .expect("create");
    let t = crate::now();
    let r = step(&kit, t).await;
    let canaries: Vec<String> = r.moved.keys().cloned().collect();
    assert_eq!(canaries.len(), 2);
    report(&kit, &canaries[0], 2, None);
    report(
        &kit,
        &canaries[1],
        1,
        Some("model demand v2: smoke test 0 failed: output differs"),
    );
    let r = step(&kit, t + 1).await;
    assert_eq!(r.state, State::RollingBack);
    assert!(
        r.reason.as_deref().unwrap_or("").contains("smoke test"),
        "{:?}",
        r.reason
    );
    assert_eq!(
        wanted(&kit),
        vec![1; FLEET],
        "every device back on (or still on) v1"
    );
    // Until the canary reports v1 again, the rollback is not done.
    assert_eq!(step(&kit, t + 2).await.state, State::RollingBack);
    report(&kit, &canaries[0], 1, None);
    let r = step(&kit, t + 3).await;
    assert_eq!(r.state, State::RolledBack);
    assert_eq!(r.moved.len(), 2, "no device outside wave 1 was moved");
}

#[tokio::test]
async fn too_few_samples_are_inconclusive_until_the_longest_bake_then_the_policy() {
    let kit = fleet().await;
    let mut s = spec(&["1", "100%"], 60);
    s.max_bake_secs = Some(120);
    s.on_failure = Policy::Pause;
    kit.hub.rollouts.create(s).await.expect("create");
    let t = crate::now();
    step(&kit, t).await;
    install_wanted(&kit);
    assert_eq!(step(&kit, t + 1).await.state, State::Baking);
    // Bake not over: nothing judged.
    assert_eq!(step(&kit, t + 30).await.state, State::Baking);
    // Over, but no telemetry at all: inconclusive, extended (said once in the audit log).
    let r = step(&kit, t + 62).await;
    assert_eq!(r.state, State::Baking);
    step(&kit, t + 63).await;
    let extended = |kit: &Kit| {
        kit.hub
            .rollouts
            .audit(r.id)
            .expect("audit")
            .iter()
            .filter(|a| a.detail.contains("bake is extended"))
            .count()
    };
    assert_eq!(extended(&kit), 1);
    let verdicts = &r.current().expect("wave").verdicts;
    let error_rate = verdicts
        .iter()
        .find(|v| v.gate == "error_rate")
        .expect("gate");
    assert_eq!(
        error_rate.outcome,
        gates::Outcome::Inconclusive,
        "{}",
        error_rate.detail
    );
    // Past the longest bake: the policy (pause) applies.
    let r = step(&kit, t + 122).await;
    assert_eq!(r.state, State::Paused);
    assert!(
        r.reason.as_deref().unwrap_or("").contains("inconclusive"),
        "{:?}",
        r.reason
    );
    // An operator resumes: the wave bakes again.
    let r = kit.hub.rollouts.act(r.id, "resume").await.expect("resume");
    assert_eq!(r.state, State::Running);
}

#[tokio::test]
async fn overlapping_rollouts_are_refused_unless_one_supersedes_the_other() {
    let kit = fleet().await;
    let first = kit
        .hub
        .rollouts
        .create(spec(&["1", "100%"], 0))
        .await
        .expect("create");
    let err = kit
        .hub
        .rollouts
        .create(spec(&["100%"], 0))
        .await
        .expect_err("overlap");
    assert!(
        err.to_string().contains(&format!("rollout {}", first.id)),
        "{err}"
    );
    let mut s = spec(&["100%"], 0);
    s.supersedes = Some(first.id);
    let second = kit.hub.rollouts.create(s).await.expect("supersede");
    assert_eq!(
        kit.hub.rollouts.get(first.id).expect("get").state,
        State::Aborted
    );
    assert_eq!(second.state, State::Pending);
    // Another model's rollout does not overlap.
    kit.publish("stock", 1).await;
    let mut other = spec(&["100%"], 0);
    other.model = "stock".into();
    other.version = 1;
    kit.hub.rollouts.create(other).await.expect("another model");
}

#[tokio::test]
async fn pause_holds_a_rollout_and_a_late_joiner_gets_the_current_decision() {
    let kit = fleet().await;
    let r = kit
        .hub
        .rollouts
        .create(spec(&["100%"], 0))
        .await
        .expect("create");
    let t = crate::now();
    step(&kit, t).await;
    assert_eq!(wanted(&kit), vec![2; FLEET]);
    kit.hub.rollouts.act(r.id, "pause").await.expect("pause");
    install_wanted(&kit);
    assert_eq!(
        step(&kit, t + 1).await.state,
        State::Paused,
        "a paused rollout waits"
    );
    kit.hub.rollouts.act(r.id, "resume").await.expect("resume");
    // A device joins the selector mid-rollout: the wave reaches it too.
    kit.enroll("shop-late", &["eu"], true).await;
    let r = step(&kit, t + 2).await;
    assert!(r.moved.contains_key("shop-late"), "{:?}", r.moved.keys());
    assert_eq!(r.state, State::Running, "it must install too");
    report(&kit, "shop-late", 2, None);
    step(&kit, t + 3).await;
    assert_eq!(step(&kit, t + 4).await.state, State::Succeeded);
}

#[tokio::test]
async fn operator_actions_that_do_not_apply_are_refused_with_the_state() {
    let kit = fleet().await;
    let r = kit
        .hub
        .rollouts
        .create(spec(&["100%"], 0))
        .await
        .expect("create");
    let err = kit
        .hub
        .rollouts
        .act(r.id, "resume")
        .await
        .expect_err("not paused");
    assert!(matches!(err, HubError::Conflict(_)), "{err}");
    assert!(err.to_string().contains("is pending"), "{err}");
    let err = kit
        .hub
        .rollouts
        .act(r.id, "explode")
        .await
        .expect_err("unknown");
    assert!(matches!(err, HubError::Invalid(_)), "{err}");
    assert!(
        err.to_string().contains("pause, resume, abort or rollback"),
        "{err}"
    );
    let err = kit
        .hub
        .rollouts
        .act(99, "pause")
        .await
        .expect_err("no such rollout");
    assert!(matches!(err, HubError::NotFound(_)), "{err}");
    kit.hub.rollouts.act(r.id, "abort").await.expect("abort");
    let err = kit.hub.rollouts.act(r.id, "pause").await.expect_err("over");
    assert!(matches!(err, HubError::Conflict(_)), "{err}");
    // Nothing was moved and nothing changed.
    assert!(kit.hub.rollouts.get(r.id).expect("get").moved.is_empty());
    assert_eq!(wanted(&kit), vec![1; FLEET]);
}

/// While a wave bakes, its devices and as many baseline devices get a signed 60 s window
/// instruction in their bundle (format 2 only); it ends with the wave, and the last wave, which
/// leaves no baseline, is not held by the canary-vs-baseline gates.
#[tokio::test]
async fn a_baking_wave_and_its_baseline_get_short_windows_until_it_ends() {
    let kit = fleet().await;
    // Devices that read bundle format 2 (an agent of this version reports it).
    for i in 0..FLEET {
        kit.hub
            .report_status(
                &id(i),
                DeviceStatus {
                    active: vec![ModelRef {
                        name: "demand".into(),
                        version: 1,
                    }],
                    bundle_format: 2,
                    ..Default::default()
                },
            )
            .expect("report");
    }
    let mut s = spec(&["2", "100%"], 60);
    s.gates.min_devices = 1;
    kit.hub.rollouts.create(s).await.expect("create");
    let t = crate::now();
    let r = step(&kit, t).await;
    let orders = kit.hub.rollouts.windows().expect("orders");
    assert_eq!(
        orders.len(),
        4,
        "2 canaries and 2 baseline devices: {orders:?}"
    );
    let canaries: Vec<&String> = r.moved.keys().collect();
    for (device, order) in &orders {
        assert_eq!(order.window_secs, 60);
        let role = if canaries.contains(&device) {
            "canary"
        } else {
            "baseline"
        };
        assert!(order.reason.ends_with(role), "{device}: {}", order.reason);
    }
    // The instruction travels signed in the device's bundle, for that device only.
    let (device, _) = &orders[0];
    let d = kit.hub.devices.get(device).expect("read").expect("device");
    let bytes = kit
        .hub
        .desired
        .issue_bytes(&d, crate::desired::Desired::pushed_format(&d))
        .expect("bundle");
    let bundle = edgefleet_common::device::AssignmentBundle::from_wire(&bytes).expect("decode");
    let config = kit.hub.config();
    let root = config.trust.clone();
    let w = bundle
        .window
        .expect("a window instruction")
        .verify_hub(&root, t, edgefleet_common::Permission::Assignments)
        .expect("signed under the root");
    assert_eq!((w.device.as_str(), w.window_secs), (device.as_str(), 60));
    // Re-issued unchanged while fresh: the bundle's bytes (and its ETag) do not churn.
    assert_eq!(
        kit.hub
            .desired
            .issue_bytes(&d, crate::desired::Desired::pushed_format(&d))
            .expect("again"),
        bytes
    );
    // A device that does not read format 2 gets format 1, without the instruction.
    let mut old = d.clone();
    if let Some(st) = old.status.as_mut() {
        st.bundle_format = 0;
    }
    let v1 = kit
        .hub
        .desired
        .issue_bytes(&old, crate::desired::Desired::pushed_format(&old))
        .expect("v1");
    assert!(v1.len() < bytes.len());
    assert!(
        edgefleet_common::device::AssignmentBundle::from_wire(&v1)
            .expect("v1")
            .window
            .is_none()
    );
    // Baking without telemetry: inconclusive, so extended; the short windows stay.
    install_wanted(&kit);
    assert_eq!(step(&kit, t + 1).await.state, State::Baking);
    let r = step(&kit, t + 62).await;
    assert_eq!(r.state, State::Baking, "{:?}", r.reason);
    assert_eq!(kit.hub.rollouts.windows().expect("orders").len(), 4);
    // The rollout ends: every device returns to its own window.
    kit.hub.rollouts.act(r.id, "abort").await.expect("abort");
    step(&kit, t + 63).await;
    assert!(kit.hub.rollouts.windows().expect("orders").is_empty());
    let bundle = edgefleet_common::device::AssignmentBundle::from_wire(
        &kit.hub
            .desired
            .issue_bytes(&d, crate::desired::Desired::pushed_format(&d))
            .expect("bundle"),
    )
    .expect("decode");
    assert!(bundle.window.is_none());
}

/// A wave that leaves no device on the old version after an earlier wave was judged against
/// a baseline (the last, at 100 %): the canary-vs-baseline gates do not hold it, its installs
/// decide. A rollout whose first wave takes every device follows `no_baseline` instead.
#[tokio::test]
async fn the_last_wave_with_no_baseline_left_is_judged_by_its_installs() {
    let kit = fleet().await;
    let mut s = spec(&["1", "100%"], 60);
    // Wave 1 passes without telemetry (no data on either side, and the policy says pass).
    s.gates.min_devices = 0;
    s.gates.min_requests = 0;
    s.gates.no_baseline = gates::NoData::Pass;
    kit.hub.rollouts.create(s).await.expect("create");
    let t = crate::now();
    step(&kit, t).await;
    install_wanted(&kit);
    assert_eq!(step(&kit, t + 1).await.state, State::Baking);
    let r = step(&kit, t + 62).await;
    assert_eq!((r.state, r.wave), (State::Running, 1), "{:?}", r.reason);
    install_wanted(&kit);
    assert_eq!(step(&kit, t + 63).await.state, State::Baking);
    let r = step(&kit, t + 124).await;
    assert_eq!(r.state, State::Succeeded, "{:?}", r.reason);
    let verdicts = &r.waves.last().expect("wave").verdicts;
    assert_eq!(
        verdicts
            .iter()
            .filter(|v| v.detail.contains("none is left as a baseline"))
            .count(),
        4,
        "{verdicts:?}"
    );
}

/// One wave of 100 %: no earlier wave was judged, so no baseline means `no_baseline`
/// (inconclusive by default): the bake is extended, not passed.
#[tokio::test]
async fn a_single_wave_with_no_baseline_follows_the_no_data_policy() {
    let kit = fleet().await;
    kit.hub
        .rollouts
        .create(spec(&["100%"], 60))
        .await
        .expect("create");
    let t = crate::now();
    step(&kit, t).await;
    install_wanted(&kit);
    assert_eq!(step(&kit, t + 1).await.state, State::Baking);
    let r = step(&kit, t + 62).await;
    assert_eq!(
        r.state,
        State::Baking,
        "extended while inconclusive: {:?}",
        r.reason
    );
}

/// Maintenance windows hold a wave's start (the first wave's too) until the time of day is
/// inside one; a passed wave keeps its devices and waits. Ranges wrap past midnight.
#[tokio::test]
async fn waves_start_only_inside_a_maintenance_window() {
    let w = MaintenanceWindow::parse("22:00-04:00").expect("window");
    let at = |h: u64, m: u64| 86_400 * 20_000 + h * 3600 + m * 60;
    let utc = |t| w.contains(t, None);
    assert!(utc(at(23, 0)) && utc(at(3, 59)) && utc(at(22, 0)));
    assert!(!utc(at(4, 0)) && !utc(at(12, 0)));
    for bad in [
        "22:00",
        "25:00-01:00",
        "10:00-10:00",
        "a:b-c:d",
        "10:00-10:60",
        "010:00-11:00",
        "01:00-02:00@Mars/Olympus_Mons",
        "01:00-02:00@",
    ] {
        assert!(MaintenanceWindow::parse(bad).is_err(), "{bad}");
    }
    let kit = fleet().await;
    let mut s = spec(&["1", "100%"], 0);
    // Open from 01:00 to 02:00 UTC; the clock below starts at midnight.
    s.maintenance_windows = vec![MaintenanceWindow::parse("01:00-02:00").expect("window")];
    kit.hub.rollouts.create(s).await.expect("create");
    let t = at(0, 0);
    assert_eq!(step(&kit, t).await.state, State::Pending, "outside: held");
    let r = step(&kit, at(1, 0)).await;
    assert_eq!((r.state, r.wave), (State::Running, 0), "inside: started");
    install_wanted(&kit);
    step(&kit, at(1, 30)).await;
    // Wave 1 passes after the window closed: the next wave waits, its devices untouched.
    let r = step(&kit, at(2, 30)).await;
    assert_eq!((r.state, r.wave), (State::Baking, 0), "{:?}", r.reason);
    assert_eq!(wanted(&kit).iter().filter(|v| **v == 2).count(), 1);
    let r = step(&kit, at(25, 0)).await;
    assert_eq!(
        (r.state, r.wave),
        (State::Running, 1),
        "the next day's window"
    );
    // A bad window in a spec is refused with the field named.
    let mut bad = spec(&["100%"], 0);
    bad.maintenance_windows = vec![
        MaintenanceWindow {
            from: "24:00".into(),
            to: "01:00".into(),
            zone: None,
        },
        MaintenanceWindow {
            from: "01:00".into(),
            to: "02:00".into(),
            zone: Some("Nowhere/Town".into()),
        },
    ];
    let e = kit.hub.rollouts.create(bad).await.expect_err("bad window");
    let text = e.to_string();
    assert!(
        text.contains("maintenance_windows")
            && text.contains("24:00")
            && text.contains("Nowhere/Town"),
        "both problems named: {text}"
    );
}

/// A window in a named zone follows that zone (daylight saving time included); one in the
/// device's zone follows each device's reported zone, UTC for a device that reports none.
#[test]
fn windows_in_a_named_zone_and_in_the_devices_zone() {
    let at = |h: u64, m: u64| 86_400 * 20_000 + h * 3600 + m * 60; // a day in October 2024
    // Etc/GMT-10 is UTC+10 (POSIX signs are inverted).
    let named = MaintenanceWindow::parse("01:00-02:00@Etc/GMT-10").expect("window");
    assert!(named.contains(at(15, 30), None) && !named.contains(at(1, 30), None));
    let device = MaintenanceWindow::parse("01:00-02:00@device").expect("window");
    assert!(device.follows_device());
    assert!(device.contains(at(1, 30), None), "no zone: UTC");
    assert!(
        device.contains(at(1, 30), Some("Unknown/Zone")),
        "unknown: UTC"
    );
    assert!(!device.contains(at(1, 30), Some("Etc/GMT-10")));
    assert!(device.contains(at(15, 30), Some("Etc/GMT-10")));
    // Berlin: UTC+2 in summer, UTC+1 in winter.
    let berlin = MaintenanceWindow::parse("03:00-04:00@Europe/Berlin").expect("window");
    let summer = 1_719_799_200; // 2024-07-01 02:00 UTC = 04:00 CEST
    let winter = 1_704_074_400; // 2024-01-01 02:00 UTC = 03:00 CET
    assert!(!berlin.contains(summer, None) && berlin.contains(winter, None));
    let json = serde_json::to_value(&device).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"from": "01:00", "to": "02:00", "zone": "device"})
    );
}

/// With a window in the devices' zone, each device moves in its own night: the wave starts,
/// moves the devices whose window is open, and installs only once the others moved too.
#[tokio::test]
async fn each_device_moves_inside_its_own_maintenance_window() {
    let kit = fleet().await;
    // Half the fleet is ten hours ahead of UTC.
    let ahead: Vec<String> = (0..FLEET / 2).map(id).collect();
    for d in &ahead {
        report_zone(&kit, d, "Etc/GMT-10");
    }
    let mut s = spec(&["100%"], 0);
    s.maintenance_windows = vec![MaintenanceWindow::parse("01:00-02:00@device").expect("window")];
    kit.hub.rollouts.create(s).await.expect("create");
    let at = |h: u64, m: u64| 86_400 * 20_000 + h * 3600 + m * 60;
    // 00:30 UTC: nobody's window is open, but the wave starts (its devices wait).
    let r = step(&kit, at(0, 30)).await;
    assert_eq!((r.state, r.moved.len()), (State::Running, 0));
    // 01:00 UTC: the UTC half moves; the half ten hours ahead (11:00 there) waits.
    let r = step(&kit, at(1, 0)).await;
    assert_eq!(r.moved.len(), FLEET / 2);
    assert!(
        r.moved.keys().all(|d| !ahead.contains(d)),
        "{:?}",
        r.moved.keys()
    );
    install_wanted(&kit);
    let r = step(&kit, at(1, 30)).await;
    assert_eq!(r.state, State::Running, "not installed while devices wait");
    let view = kit.hub.rollouts.view(r.clone()).expect("view");
    assert_eq!(view.progress[0].waiting, FLEET / 2, "{:?}", view.progress);
    // Long past the install timeout (900 s after the wave began), still not failed: it
    // counts from the last move.
    let r = step(&kit, at(14, 59)).await;
    assert_eq!(r.state, State::Running, "{:?}", r.reason);
    // 15:00 UTC is 01:00 ten hours ahead: the rest moves.
    let r = step(&kit, at(15, 0)).await;
    assert_eq!(r.moved.len(), FLEET);
    install_wanted(&kit);
    let r = step(&kit, at(15, 1)).await;
    assert_eq!(r.state, State::Baking, "{:?}", r.reason);
    let r = step(&kit, at(15, 2)).await;
    assert_eq!(r.state, State::Succeeded, "{:?}", r.reason);
}

/// The `halt` policy stops a failed rollout in `failed`: its devices keep the version,
/// nothing else moves, and an operator can still roll it back.
#[tokio::test]
async fn the_halt_policy_stops_in_failed_and_rollback_still_works() {
    let kit = fleet().await;
    let mut s = spec(&["2", "100%"], 0);
    s.on_failure = Policy::Halt;
    kit.hub.rollouts.create(s).await.expect("create");
    let t = crate::now();
    let r = step(&kit, t).await;
    let canaries: Vec<String> = r.moved.keys().cloned().collect();
    report(&kit, &canaries[0], 2, None);
    report(
        &kit,
        &canaries[1],
        1,
        Some("model demand v2: smoke test 0 failed"),
    );
    let r = step(&kit, t + 1).await;
    assert_eq!(r.state, State::Failed, "{:?}", r.reason);
    assert_eq!(wanted(&kit).iter().filter(|v| **v == 2).count(), 2, "kept");
    // Terminal: later steps do nothing.
    let r = step(&kit, t + 2000).await;
    assert_eq!((r.state, r.moved.len()), (State::Failed, 2));
    let r = kit
        .hub
        .rollouts
        .act(r.id, "rollback")
        .await
        .expect("rollback");
    assert_eq!(r.state, State::RollingBack);
    assert_eq!(wanted(&kit), vec![1; FLEET]);
}

/// Rolling back a succeeded tag rollout gives the tags their old version back too (the
/// success handed the version over to them); refused while a later rollout holds devices.
#[tokio::test]
async fn a_succeeded_rollout_rolls_back_its_tags_unless_a_later_one_moved_its_devices() {
    let kit = fleet().await;
    kit.publish("demand", 3).await;
    let first = kit
        .hub
        .rollouts
        .create(spec(&["100%"], 0))
        .await
        .expect("create");
    let t = crate::now();
    step(&kit, t).await;
    install_wanted(&kit);
    step(&kit, t + 1).await;
    let r = step(&kit, t + 2).await;
    assert_eq!(r.state, State::Succeeded, "{:?}", r.reason);
    assert_eq!(r.tags_before.get("eu"), Some(&Some(1)));
    // A later rollout to v3 moves a device: rolling the first back would fight it.
    let mut next = spec(&["1", "100%"], 0);
    next.version = 3;
    let second = kit.hub.rollouts.create(next).await.expect("v3");
    step(&kit, t + 3).await;
    let e = kit
        .hub
        .rollouts
        .act(first.id, "rollback")
        .await
        .expect_err("refused");
    assert!(
        e.to_string().contains(&format!("rollout {}", second.id)),
        "{e}"
    );
    // Once that one is rolled back, the first may be: tags and devices back on v1.
    kit.hub
        .rollouts
        .act(second.id, "rollback")
        .await
        .expect("rollback v3");
    install_wanted(&kit);
    step(&kit, t + 4).await;
    let r = kit
        .hub
        .rollouts
        .act(first.id, "rollback")
        .await
        .expect("rollback v2");
    assert_eq!(r.state, State::RollingBack);
    assert_eq!(wanted(&kit), vec![1; FLEET]);
    let tag = kit
        .hub
        .desired
        .list()
        .expect("desired")
        .into_iter()
        .find(|d| d.target == Target::Tag("eu".into()));
    assert_eq!(tag.map(|d| d.version), Some(1));
    // A device that joins the tag now gets v1.
    kit.enroll("shop-late", &["eu"], true).await;
    let late = kit
        .hub
        .devices
        .get("shop-late")
        .expect("read")
        .expect("device");
    let v = crate::desired::resolve_desired(&kit.hub.desired.list().expect("desired"), &late);
    assert_eq!(v.first().map(|m| m.version), Some(1));
}

/// Messages name states as the API spells them.
#[test]
fn state_names_are_the_api_names() {
    use State::*;
    for s in [
        Pending,
        Running,
        Baking,
        Paused,
        Succeeded,
        Failed,
        RollingBack,
        RolledBack,
        Aborted,
    ] {
        assert_eq!(serde_json::to_value(s).expect("json"), s.name());
    }
}

/// Two tag selectors with no tag in common still overlap when a device carries one of each.
#[tokio::test]
async fn tag_selectors_that_share_a_device_overlap() {
    let kit = fleet().await;
    kit.enroll("shop-both", &["eu", "us"], true).await;
    kit.enroll("shop-us", &["us"], true).await;
    kit.hub
        .rollouts
        .create(spec(&["1", "100%"], 0))
        .await
        .expect("eu");
    let mut us = spec(&["1", "100%"], 0);
    us.selector = Selector::Tags(vec!["us".into()]);
    let e = kit.hub.rollouts.create(us).await.expect_err("overlap");
    let text = e.to_string();
    assert!(
        text.contains("shop-both") && text.contains("pending"),
        "{text}"
    );
}

/// Rollouts of two models over the same devices each keep their own telemetry cohort (a
/// device's windows merge into both), and ending one leaves the other's.
#[tokio::test]
async fn rollouts_of_two_models_over_the_same_devices_keep_their_own_cohorts() {
    let kit = fleet().await;
    kit.publish("price", 1).await;
    kit.publish("price", 2).await;
    kit.hub
        .desired
        .assign(AssignRequest {
            target: Target::Tag("eu".into()),
            model: "price".into(),
            version: 1,
        })
        .await
        .expect("assign");
    let demand = kit
        .hub
        .rollouts
        .create(spec(&["100%"], 600))
        .await
        .expect("demand");
    let mut p = spec(&["100%"], 600);
    p.model = "price".into();
    let price = kit
        .hub
        .rollouts
        .create(p)
        .await
        .expect("price: another model");
    let t = crate::now();
    step(&kit, t).await;
    let store = kit.hub.telemetry.store();
    let mut cohorts = store.cohorts(&id(0)).expect("cohorts");
    cohorts.sort();
    assert_eq!(
        cohorts,
        vec![
            format!("~rollout-{}-0", demand.id),
            format!("~rollout-{}-0", price.id)
        ]
    );
    kit.hub
        .rollouts
        .act(demand.id, "abort")
        .await
        .expect("abort");
    assert_eq!(
        store.cohorts(&id(0)).expect("cohorts"),
        vec![format!("~rollout-{}-0", price.id)]
    );
}

/// A device's status report with a time zone that is not a zone name is refused, naming the
/// field, and the stored status is unchanged.
#[tokio::test]
async fn a_status_with_a_malformed_time_zone_is_refused() {
    let kit = fleet().await;
    report_zone(&kit, &id(0), "Europe/Berlin");
    for bad in ["../../etc/passwd", "Europe/Berlin\n", &"A".repeat(65)] {
        let e = kit
            .hub
            .report_status(
                &id(0),
                DeviceStatus {
                    time_zone: Some(bad.to_owned()),
                    ..Default::default()
                },
            )
            .expect_err("refused");
        assert!(e.to_string().contains("time_zone"), "{e}");
    }
    let d = kit.hub.devices.get(&id(0)).expect("read").expect("device");
    assert_eq!(d.time_zone(), Some("Europe/Berlin"));
}

/// A telemetry record of `device` with only prediction quality: `errors` absolute errors of
/// `version`'s predictions.
fn quality_record(
    key: &edgefleet_common::SecretKey,
    device: &str,
    seq: u64,
    version: u64,
    errors: &[f64],
    at: u64,
) -> crate::telemetry::Message {
    use edgefleet_common::Signed;
    use edgefleet_common::quality::ModelQuality;
    use edgefleet_common::telemetry::{TelemetryRecord, pack_record};
    let mut q = ModelQuality::new("demand", version);
    for e in errors {
        q.score_values(&[10.0 + e], &[10.0], false).expect("score");
    }
    let r = TelemetryRecord {
        device_id: device.into(),
        seq,
        window_start: at - 60,
        window_end: at,
        models: vec![],
        health: Default::default(),
        outbox: Default::default(),
        agent_version: "test".into(),
        quality: vec![q],
    };
    crate::telemetry::Message::Record {
        device: device.into(),
        payload: pack_record(
            &Signed::sign(&r, key, None)
                .and_then(|s| s.to_bytes())
                .expect("sign"),
        ),
    }
}

/// The quality gate judges the wave's canary against its baseline on ground truth: a canary
/// whose MAE is worse than the baseline's by more than the ratio fails the wave and rolls it
/// back; with too little feedback it is inconclusive, not a pass.
#[tokio::test]
async fn a_canary_with_a_worse_mae_fails_the_quality_gate_and_rolls_back() {
    let (kit, keys) = fleet_keys().await;
    let mut s = spec(&["2", "100%"], 60);
    s.gates.min_devices = 0;
    s.gates.min_requests = 0;
    s.gates.min_feedback = 20;
    kit.hub.rollouts.create(s).await.expect("create");
    let t = crate::now();
    step(&kit, t).await;
    install_wanted(&kit);
    assert_eq!(step(&kit, t + 1).await.state, State::Baking);
    let store = kit.hub.telemetry.store();
    let versions = wanted(&kit);
    let mut accept = kit.hub.telemetry.accept();
    let send = |seq: u64, canary_error: f64, rows: usize| {
        let mut batch = Vec::new();
        for i in 0..FLEET {
            if store.cohort(&id(i), "demand").expect("cohort").is_none() {
                continue;
            }
            let (v, e) = if versions[i] == 2 {
                (2, canary_error)
            } else {
                (1, 1.0)
            };
            batch.push(quality_record(
                &keys[i],
                &id(i),
                seq,
                v,
                &vec![e; rows],
                t + 30,
            ));
        }
        batch
    };
    // Too little feedback: inconclusive, the bake is extended.
    let out = accept.batch(send(1, 3.0, 2)).await;
    assert!(!out.acks.is_empty());
    let r = step(&kit, t + 62).await;
    assert_eq!(r.state, State::Baking, "{:?}", r.reason);
    let gate = |r: &Rollout| {
        r.current()
            .expect("wave")
            .verdicts
            .iter()
            .find(|v| v.gate == "quality")
            .cloned()
            .expect("quality verdict")
    };
    let v = gate(&r);
    assert_eq!(v.outcome, gates::Outcome::Inconclusive, "{}", v.detail);
    // Enough: the canary's MAE is three times the baseline's.
    accept.batch(send(2, 3.0, 20)).await;
    let r = step(&kit, t + 63).await;
    assert!(
        matches!(r.state, State::RollingBack | State::RolledBack),
        "{:?} {:?} {:?}",
        r.state,
        r.reason,
        r.current().map(|w| &w.verdicts)
    );
    let failed = r.waves[0]
        .verdicts
        .iter()
        .find(|v| v.gate == "quality")
        .cloned()
        .expect("quality verdict");
    assert_eq!(failed.outcome, gates::Outcome::Fail, "{}", failed.detail);
    assert_eq!((failed.canary, failed.baseline), (Some(3.0), Some(1.0)));
}
