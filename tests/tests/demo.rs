//! `edgefleet-demo`, the README's first command, run as a user runs it: every step of the
//! closed loop happens, in order, the fleet's error recovers, and the new version's lineage
//! names the trigger, the run, the gate and the rollout.

mod support;

use serde_json::Value;
use support::bin;

#[test]
fn the_demo_closes_the_loop_in_order_and_the_error_recovers() {
    let out = tempfile::tempdir().expect("tmp");
    let child = std::process::Command::new(bin("edgefleet-demo"))
        .arg("--out")
        .arg(out.path())
        .args(["--day-ms", "400"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("edgefleet-demo");
    // Bounded: the demo closes the loop in about a minute; 5 minutes means it hung.
    let pid = child.id();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(300));
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    });
    let run = child.wait_with_output().expect("edgefleet-demo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    eprintln!("{text}");
    assert!(run.status.success(), "{text}");
    let summary: Value = serde_json::from_slice(
        &std::fs::read(out.path().join("summary.json")).expect("summary.json"),
    )
    .expect("json");
    let day = |step: &str| {
        summary[step]["day"]
            .as_u64()
            .unwrap_or_else(|| panic!("{step} did not happen: {summary}"))
    };
    let shock = summary["shock_day"].as_u64().expect("shock day");
    let (drift, trigger, published, rolled_out) = (
        day("first_drift"),
        day("triggered"),
        day("published"),
        day("rolled_out"),
    );
    assert!(
        shock <= drift && drift <= trigger && trigger <= published && published <= rolled_out,
        "out of order: {summary}"
    );
    let (before, shocked, after) = (
        summary["mae_before"].as_f64().expect("before"),
        summary["mae_shocked"].as_f64().expect("shocked"),
        summary["mae_after"].as_f64().expect("after"),
    );
    assert!(shocked > 2.0 * before, "the shock hurts: {summary}");
    assert!(after <= 1.1 * before, "the error recovers: {summary}");
    // The timeline said so as it happened, in the same order.
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in the timeline"))
    };
    assert!(at("fuel prices jump") < at("drift: the hub sees fuel_price"));
    assert!(at("drift: the hub sees fuel_price") < at("retraining job 1 (drift)"));
    assert!(at("retraining job 1 (drift)") < at("candidate beats champion"));
    assert!(at("candidate beats champion") < at("wave 1 judged: pass"));
    assert!(at("wave 1 judged: pass") < at("succeeded, wave 2/2"));
    // The first wave was baked and judged on ground truth: the one shop on the new version
    // predicted better than the shops still on v1, on enough matched feedback.
    let first = &summary["waves"][0];
    assert_eq!(first["outcome"], "pass", "{summary}");
    let quality = first["verdicts"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["gate"] == "quality"))
        .unwrap_or_else(|| panic!("no quality verdict: {first}"));
    assert_eq!(quality["outcome"], "pass", "{quality}");
    let (canary, baseline) = (
        quality["canary"].as_f64().expect("canary MAE"),
        quality["baseline"].as_f64().expect("baseline MAE"),
    );
    assert!(canary < baseline, "{quality}");
    // The lineage of the new version: trigger, run, gate, rollout, back to v1.
    let lineage: Value = serde_json::from_slice(
        &std::fs::read(out.path().join("lineage.json")).expect("lineage.json"),
    )
    .expect("json");
    let v2 = &lineage[0];
    assert_eq!(v2["version"], 2, "{lineage}");
    assert_eq!(v2["job"]["trigger"]["kind"], "drift", "{v2}");
    assert_eq!(v2["run"]["gate"]["wins"], true, "{v2}");
    assert_eq!(v2["rollouts"][0]["state"], "succeeded", "{v2}");
    assert_eq!(v2["lineage"]["parent_version"], 1, "{v2}");
    assert_eq!(lineage[1]["version"], 1, "{lineage}");
    // The simulated shops went through the same rollout: every one ends on the new version.
    let sims = summary["sim_shops"].as_object().expect("sim_shops");
    assert_eq!(sims.len(), 1, "{summary}");
    assert_eq!(sims["2"], 20, "{summary}");
    assert!(at("simulated v1×") < at("simulated v2×"), "{text}");
    let png = std::fs::read(out.path().join("mae.png")).expect("mae.png");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let csv = std::fs::read_to_string(out.path().join("mae.csv")).expect("mae.csv");
    assert!(csv.lines().count() as u64 > rolled_out, "one line a day");
}
