//! The `edgefleet-hub` and `edgefleet` binaries' own surface: `--help` for newcomers,
//! `--version`, and bad arguments. (Having an integration test here also makes `cargo test
//! --workspace` build the binaries that the end-to-end tests in `tests/` run.)

use std::process::Command;

const HUB: &str = env!("CARGO_BIN_EXE_edgefleet-hub");
const CLI: &str = env!("CARGO_BIN_EXE_edgefleet");

#[test]
fn help_texts_walk_a_newcomer_through() {
    let out = Command::new(CLI).arg("--help").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "keygen",
        "delegate",
        "sign",
        "push",
        "assign",
        "EDGEFLEET_HUB",
        "Typical first run",
    ] {
        assert!(
            text.contains(needle),
            "edgefleet --help lacks {needle:?}:\n{text}"
        );
    }
    let out = Command::new(HUB).arg("--help").output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("serve") && text.contains("check-config"),
        "{text}"
    );
    for bin in [HUB, CLI] {
        let out = Command::new(bin).arg("--version").output().expect("run");
        assert!(out.status.success());
    }
}

#[test]
fn bad_arguments_are_refused_with_usage() {
    let out = Command::new(CLI)
        .args(["assign", "demand", "not-a-number"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value"));
    let out = Command::new(CLI)
        .args(["keygen", "--role", "emperor", "--out", "x"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"));
}
