//! The runner against trainers that misbehave in every way the contract forbids: real
//! processes (`sh` scripts), real files, real timeouts.

use std::time::{Duration, Instant};

use super::runner::*;

fn trainer(script: &str) -> TrainerCommand {
    TrainerCommand {
        command: vec!["sh".into(), "-c".into(), script.into(), "trainer".into()],
        timeout: Duration::from_secs(20),
        max_dir_bytes: 4 << 20,
        max_model_bytes: 1 << 20,
        max_log_bytes: 4096,
    }
}

const GOOD: &str =
    r#"echo fitting; printf 'onnx' > model.onnx; echo '{"mae": 1.5}' > metrics.json"#;

async fn run_in(t: &TrainerCommand) -> (RunReport, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let r = run(t, dir.path()).await;
    (r, dir)
}

#[tokio::test]
async fn a_good_trainer_yields_its_model_metrics_and_log() {
    let (r, _dir) = run_in(&trainer(GOOD)).await;
    assert_eq!(r.outcome, Ok(()), "{}", r.log);
    assert_eq!(r.model.as_deref(), Some(&b"onnx"[..]));
    assert_eq!(r.metrics, Some(serde_json::json!({"mae": 1.5})));
    assert_eq!(r.log, "fitting\n");
}

#[tokio::test]
async fn the_job_directory_is_the_last_argument_and_the_working_directory() {
    let (r, dir) = run_in(&trainer(&format!(
        r#"[ "$1" = "$PWD" ] && [ "$HOME" = "$PWD" ] && {GOOD}"#
    )))
    .await;
    assert_eq!(r.outcome, Ok(()), "{} in {}", r.log, dir.path().display());
}

#[tokio::test]
async fn the_trainer_sees_no_environment_of_the_hubs() {
    // cargo sets CARGO_* for this test process; the trainer must see none of it.
    let (r, _dir) = run_in(&trainer(&format!("env; {GOOD}"))).await;
    assert_eq!(r.outcome, Ok(()));
    assert!(r.log.contains("PATH="), "{}", r.log);
    assert!(!r.log.contains("CARGO"), "{}", r.log);
    assert!(!r.log.contains("EDGEFLEET"), "{}", r.log);
}

#[tokio::test]
async fn failures_say_what_was_wrong_and_yield_no_model() {
    let cases = [
        ("echo 'out of memory' >&2; exit 3", "exit status: 3"),
        ("echo '{}' > metrics.json", "model.onnx is missing"),
        (
            ": > model.onnx; echo '{}' > metrics.json",
            "model.onnx is empty",
        ),
        ("printf x > model.onnx", "metrics.json is missing"),
        (
            "printf x > model.onnx; echo nope > metrics.json",
            "metrics.json is not JSON",
        ),
        (
            "printf x > model.onnx; echo '[1]' > metrics.json",
            "not a JSON object",
        ),
        (
            "head -c 2000000 /dev/zero > model.onnx; echo '{}' > metrics.json",
            "over the 1048576-byte bound",
        ),
        ("kill -9 $$", "signal: 9"),
    ];
    for (script, needle) in cases {
        let (r, _dir) = run_in(&trainer(script)).await;
        let Err(f) = &r.outcome else {
            panic!("{script}: succeeded")
        };
        assert!(f.to_string().contains(needle), "{script}: {f}");
        assert!(r.model.is_none() && r.metrics.is_none(), "{script}");
    }
    let (r, _dir) = run_in(&trainer("exit 3")).await;
    let (r2, _dir2) = run_in(&trainer("echo 'out of memory' >&2; exit 3")).await;
    assert!(r.log.is_empty());
    assert_eq!(r2.log, "out of memory\n", "stderr is kept");
}

#[tokio::test]
async fn a_missing_program_is_not_started() {
    let mut t = trainer(GOOD);
    t.command = vec!["/nonexistent/edgefleet-train".into()];
    let (r, _dir) = run_in(&t).await;
    assert!(
        matches!(r.outcome, Err(Failure::NotStarted(_))),
        "{:?}",
        r.outcome
    );
    t.command = vec![];
    let (r, _dir) = run_in(&t).await;
    assert!(
        matches!(r.outcome, Err(Failure::NotStarted(_))),
        "{:?}",
        r.outcome
    );
}

/// A hung trainer is killed at its timeout, with what it started in the background.
#[tokio::test]
async fn a_hung_trainer_and_its_children_are_killed_at_the_timeout() {
    let mut t = trainer("sleep 300 & echo $! > child.pid; echo started; sleep 300");
    t.timeout = Duration::from_millis(1500);
    let started = Instant::now();
    let (r, dir) = run_in(&t).await;
    assert_eq!(r.outcome, Err(Failure::TimedOut(1)));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(r.log, "started\n");
    let pid = std::fs::read_to_string(dir.path().join("child.pid")).expect("pid");
    let proc = std::path::PathBuf::from(format!("/proc/{}", pid.trim()));
    let deadline = Instant::now() + Duration::from_secs(5);
    // Killed: gone, or a zombie until its parent (also killed) is reaped by init.
    while proc.exists()
        && !std::fs::read_to_string(proc.join("stat")).is_ok_and(|s| s.contains(") Z"))
    {
        assert!(Instant::now() < deadline, "the background child survived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A trainer that exits but leaves a child holding its output open is not waited on for it.
#[tokio::test]
async fn a_child_left_behind_does_not_hold_the_run() {
    let started = Instant::now();
    let (r, _dir) = run_in(&trainer(&format!("sleep 300 & {GOOD}"))).await;
    assert_eq!(r.outcome, Ok(()), "{}", r.log);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_trainer_filling_its_directory_is_killed() {
    let mut t = trainer("while :; do head -c 1000000 /dev/zero >> big; sleep 0.05; done");
    t.max_dir_bytes = 3_000_000;
    let (r, _dir) = run_in(&t).await;
    assert_eq!(r.outcome, Err(Failure::DirectoryTooLarge(3_000_000)));
    // Written at the end, past the checks: still refused.
    t = trainer(&format!("head -c 4000000 /dev/zero > big; {GOOD}"));
    t.max_dir_bytes = 3_000_000;
    let (r, _dir) = run_in(&t).await;
    assert_eq!(r.outcome, Err(Failure::DirectoryTooLarge(3_000_000)));
}

#[tokio::test]
async fn only_the_end_of_a_flood_of_output_is_kept() {
    let mut t = trainer("printf onnx > model.onnx; echo '{}' > metrics.json; seq 1 200000");
    t.max_log_bytes = 1000;
    let (r, _dir) = run_in(&t).await;
    assert_eq!(r.outcome, Ok(()));
    assert!(r.log.len() <= 1000);
    assert!(
        r.log.ends_with("199999\n200000\n"),
        "{}",
        &r.log[r.log.len() - 20..]
    );
}
