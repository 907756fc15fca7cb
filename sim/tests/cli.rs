//! The command line refuses what it cannot run, saying why (no hub needed).

use std::process::{Command, Output};

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgefleet-sim"))
        .args(args)
        .env_remove("EDGEFLEET_HUB")
        .output()
        .expect("run edgefleet-sim")
}

/// Refused with exit status 2 and a message containing every `needle`.
fn refused(args: &[&str], needles: &[&str]) {
    let out = sim(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?} must be refused: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "{args:?}: {n:?} not in:\n{err}");
    }
}

const BASE: [&str; 4] = [
    "--hub",
    "http://127.0.0.1:9",
    "--root-key",
    "/nonexistent/root.pub",
];

fn with(extra: &[&'static str]) -> Vec<&'static str> {
    BASE.iter().copied().chain(extra.iter().copied()).collect()
}

#[test]
fn bad_arguments_are_refused_with_a_clear_message() {
    refused(&["--devices", "3"], &["--hub <URL>", "--root-key <FILE>"]);
    refused(
        &with(&["--devices", "0"]),
        &["--devices", "0 is not in 1..=100000"],
    );
    refused(
        &with(&["--error-version", "3", "--error-rate", "1.5"]),
        &["--error-rate", "1.5 is not a fraction between 0 and 1"],
    );
    refused(
        &with(&["--slow-version", "3"]),
        &["--slow-factor <F>", "required"],
    );
    refused(
        &with(&["--fail-install-fraction", "0.5"]),
        &["--fail-install-version <VERSION>"],
    );
    refused(&with(&["--rate=-1"]), &["--rate", "negative"]);
    refused(&with(&["--window-secs", "0"]), &["--window-secs"]);
    refused(
        &["--hub", "127.0.0.1:7700", "--root-key", "x"],
        &["--hub \"127.0.0.1:7700\" must be an http:// or https:// URL"],
    );
    refused(
        &with(&["--mqtt", "http://x:1"]),
        &["--mqtt: scheme \"http\" is not mqtt:// or mqtts://"],
    );
    refused(&with(&["--tag", "Bad Tag"]), &["--tag \"Bad Tag\""]);
}

#[test]
fn help_explains_the_simulator() {
    let out = sim(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "simulated Edgefleet devices",
        "--fail-install-fraction",
        "--report-every",
        "--enroll-token",
        "10,000 devices",
    ] {
        assert!(help.contains(needle), "{needle:?} not in --help:\n{help}");
    }
}

#[test]
fn a_missing_root_key_is_an_error_that_names_it() {
    let out = sim(&with(&[
        "--devices",
        "1",
        "--run-secs",
        "1",
        "--report-every",
        "0",
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot read --root-key /nonexistent/root.pub"),
        "{err}"
    );
}
