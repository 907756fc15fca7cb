//! `edgefleet-demo`'s command line, as a user meets it (the scenario itself runs in
//! tests/tests/demo.rs). Also makes `cargo test --workspace` build the binary that test runs.

use std::process::Command;

fn demo(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edgefleet-demo"))
        .args(args)
        .output()
        .expect("edgefleet-demo");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn help_names_every_knob() {
    let (code, out) = demo(&["--help"]);
    assert_eq!(code, Some(0), "{out}");
    for knob in [
        "--shops",
        "--day-ms",
        "--shock-day",
        "--out",
        "--keep",
        "--trainer",
    ] {
        assert!(out.contains(knob), "{knob} in {out}");
    }
}

#[test]
fn bad_settings_are_refused_all_at_once_before_anything_starts() {
    let (code, out) = demo(&["--shops", "0", "--day-ms", "5", "--shock-day", "2"]);
    assert_eq!(code, Some(2), "{out}");
    for problem in ["--shops", "--day-ms", "--shock-day"] {
        assert!(out.contains(problem), "{problem} in {out}");
    }
    let (code, out) = demo(&["--shops", "many"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("invalid value 'many'"), "{out}");
}
