//! The `edgefleet-agent` binary's own surface: `--help` a newcomer can follow, `--version`, and
//! `check-config` exit codes. (Having an integration test here also makes `cargo test
//! --workspace` build the binary that the end-to-end tests in `tests/` run.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_edgefleet-agent");

#[test]
fn help_explains_the_subcommands_and_env() {
    let out = Command::new(BIN).arg("--help").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "run",
        "check-config",
        "EDGEFLEET_AGENT_",
        "Open Inference Protocol",
    ] {
        assert!(text.contains(needle), "--help lacks {needle:?}:\n{text}");
    }
    let out = Command::new(BIN).arg("--version").output().expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("edgefleet-agent "));
}

#[test]
fn check_config_fails_on_an_empty_config_and_unknown_subcommands_fail() {
    let dir = std::env::temp_dir().join(format!("edgefleet-agent-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, "").expect("write");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("device_id"));
    let out = Command::new(BIN).arg("frobnicate").output().expect("run");
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn inspect_prints_the_schema_a_manifest_should_declare() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/onnx_ml");
    let out = Command::new(BIN)
        .arg("inspect")
        .arg(format!("{fixtures}/rf_binary.onnx"))
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["inputs"][0]["name"], "input");
    assert_eq!(v["inputs"][0]["datatype"], "FP32");
    assert_eq!(v["inputs"][0]["shape"], serde_json::json!([-1, 8]));
    assert_eq!(v["outputs"][0]["name"], "output_label");
    assert_eq!(v["outputs"][0]["datatype"], "INT64");
    assert_eq!(v["outputs"][1]["shape"], serde_json::json!([-1, 2]));
    // Not a model: exit 1, a message, no panic.
    let out = Command::new(BIN)
        .arg("inspect")
        .arg(format!("{fixtures}/expected.json"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an ONNX model"));
}
