//! The binary's own surface (and, for `cargo test --workspace`, the reason cargo builds it
//! before tests/tests/trainer.rs runs it).

use std::process::Command;

fn train() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edgefleet-train"))
}

#[test]
fn help_names_the_contract_and_a_missing_job_is_refused() {
    let out = train().arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in ["JOB_DIR", "params.json", "model.onnx", "docs/trainers.md"] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
    let tmp = std::env::temp_dir().join(format!("edgefleet-train-missing-{}", std::process::id()));
    let out = train().arg(&tmp).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("params.json"), "{err}");
}
