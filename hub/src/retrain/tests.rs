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

// ---- jobs and runs: the domain over a real hub (temp dir), a real trainer process ----

mod jobs {
    use edgefleet_common::sample::{SampleBatch, SampleRow, Value};
    use edgefleet_common::telemetry::pack_record;
    use edgefleet_common::{DataType, Digest, SecretKey, Signed};
    use serde_json::json;

    use std::path::Path;

    use crate::error::HubError;
    use crate::retrain::{JobState, PolicyRequest, RunFailure};
    use crate::telemetry::Message;
    use crate::testkit::Kit;

    /// A trainer that checks the job directory holds what the contract says (and not the
    /// held-out rows), then "trains": its model is `candidate`, a model the test fitted.
    fn checking(candidate: &Path) -> String {
        checking_seen(candidate, Path::new("/dev/null"))
    }

    /// [`checking`], also copying the dataset it was given to `seen`.
    fn checking_seen(candidate: &Path, seen: &Path) -> String {
        format!(
            r#"set -e
for f in dataset.csv dataset.schema.json params.json parent/manifest.json parent/model.onnx; do
  [ -s "$f" ] || {{ echo "missing $f"; exit 9; }}
done
[ ! -e holdout.csv ] || {{ echo "the holdout is in the job directory"; exit 9; }}
grep -q '"seed": 7' params.json || {{ echo "no seed"; cat params.json; exit 9; }}
grep -q '"name": "demand"' parent/manifest.json || {{ echo "no parent"; exit 9; }}
echo "training on $(($(wc -l < dataset.csv) - 1)) rows"
cp dataset.csv '{}'
cp '{}' model.tmp && mv model.tmp model.onnx
echo '{{"rows": 1}}' > metrics.json"#,
            seen.display(),
            candidate.display()
        )
    }

    /// A ridge regression of `y` on (price, temp) fitted by the reference trainer's own code,
    /// as ONNX with the kit's tensors.
    fn fit(rows: &[(f64, f64, f64)]) -> Vec<u8> {
        crate::testkit::fit_price_temp(rows, false)
    }

    /// `bytes` in a file of `dir`, for a trainer to copy.
    fn file(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    }

    /// The truth of the captured rows is 2 + temp: a model that knows it, and one that
    /// predicts 1 whatever comes.
    fn good_model() -> Vec<u8> {
        fit(&[
            (1.0, 0.0, 2.0),
            (2.0, 1.0, 3.0),
            (1.0, 5.0, 7.0),
            (3.0, 2.0, 4.0),
        ])
    }
    fn flat_model() -> Vec<u8> {
        fit(&[
            (1.0, 0.0, 1.0),
            (2.0, 1.0, 1.0),
            (1.0, 5.0, 1.0),
            (3.0, 2.0, 1.0),
        ])
    }

    fn kit(script: &str) -> Kit {
        let script = script.to_owned();
        Kit::with(move |c| {
            c.trainer_command = vec!["sh".into(), "-c".into(), script, "trainer".into()];
        })
    }

    /// Uploads `n` captured rows of `demand` v1 from `device`, in one window ending at `end`.
    async fn capture(kit: &Kit, key: &SecretKey, device: &str, seq: u64, end: u64, n: usize) {
        let rows = (0..n)
            .map(|i| SampleRow {
                made_at: end - 60 + i as u64,
                inputs: vec![seq as f64, i as f64],
                predicted: vec![Value::Number(1.0)],
                truth: vec![Value::Number(2.0 + i as f64)],
            })
            .collect();
        capture_rows(kit, key, device, seq, end, rows).await;
    }

    /// Uploads `rows` of `demand` v1 from `device` as one window ending at `end`.
    async fn capture_rows(
        kit: &Kit,
        key: &SecretKey,
        device: &str,
        seq: u64,
        end: u64,
        rows: Vec<SampleRow>,
    ) {
        let batch = SampleBatch {
            device_id: device.into(),
            seq,
            model: "demand".into(),
            version: 1,
            window_start: rows
                .iter()
                .map(|r| r.made_at)
                .min()
                .unwrap_or(end)
                .min(end - 60),
            window_end: end,
            offered: rows.len() as u64,
            inputs: vec!["price".into(), "temp".into()],
            outputs: vec!["y".into()],
            rows,
        };
        deliver(kit, key, device, seq, &batch, |device, payload| {
            Message::Samples { device, payload }
        })
        .await;
    }

    /// Signs `body` as `device` and hands it to the hub's telemetry consumer as the message
    /// `kind` makes; the hub must ack it.
    async fn deliver<T: edgefleet_common::encoding::Document>(
        kit: &Kit,
        key: &SecretKey,
        device: &str,
        seq: u64,
        body: &T,
        kind: impl FnOnce(String, Vec<u8>) -> Message,
    ) {
        let payload = pack_record(
            &Signed::sign(body, key, None)
                .and_then(|s| s.to_bytes())
                .expect("sign"),
        );
        let mut accept = kit.hub.telemetry.accept();
        let out = accept.batch(vec![kind(device.into(), payload)]).await;
        assert_eq!(out.acks[device], vec![seq]);
    }

    fn policy(min_rows: u64, retries: u32) -> PolicyRequest {
        PolicyRequest {
            params: json!({"model": "ridge"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            seed: 7,
            min_rows,
            retries,
            holdout: 0.25,
            ..PolicyRequest::default()
        }
    }

    /// The champion (`flat_model`) serving demand v1 on shop-1, which captured 8 rows.
    async fn fleet_with_samples(script: &str) -> Kit {
        let kit = kit(script);
        kit.publish_artifact("demand", 1, flat_model()).await;
        let key = kit.enroll("shop-1", &[], true).await;
        let now = crate::now();
        capture(&kit, &key, "shop-1", 1, now - 600, 4).await;
        capture(&kit, &key, "shop-1", 2, now - 300, 4).await;
        kit
    }

    #[tokio::test]
    async fn a_manual_job_trains_on_the_older_rows_and_its_candidate_beats_the_champion() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (candidate, seen) = (
            file(&tmp, "good.onnx", &good_model()),
            tmp.path().join("seen"),
        );
        let kit = fleet_with_samples(&checking_seen(&candidate, &seen)).await;
        let r = &kit.hub.retrain;
        let now = crate::now();
        // No policy, no job.
        assert!(matches!(
            r.request("demand", "", now).await,
            Err(HubError::Conflict(m)) if m.contains("no retraining policy")
        ));
        r.set_policy("demand", policy(4, 0), now)
            .await
            .expect("policy");
        let job = r
            .request("demand", "fuel prices jumped", now)
            .await
            .expect("job");
        assert_eq!((job.state, job.parent), (JobState::Queued, 1));
        assert_eq!(job.trigger.values["reason"], "fuel prices jumped");
        // One job per model at a time.
        assert!(matches!(
            r.request("demand", "again", now).await,
            Err(HubError::Conflict(_))
        ));
        assert_eq!(r.tick(now).await.expect("tick"), vec![job.id]);
        assert_eq!(
            r.tick(now).await.expect("tick"),
            Vec::<u64>::new(),
            "started once"
        );
        let done = r.execute(job.id).await.expect("execute");
        let run = r.run(done.runs[0]).expect("run");
        assert_eq!(
            done.state,
            JobState::Succeeded,
            "{:?} {}",
            run.failure,
            run.log
        );
        assert_eq!(run.log, "training on 6 rows\n");
        // The trainer saw the six older rows, never the two held out.
        let (train, held) = kit
            .hub
            .telemetry
            .export_split("demand", &Default::default(), 0.25)
            .expect("split");
        assert_eq!(std::fs::read(&seen).expect("seen"), train.csv);
        let model = std::fs::read(
            kit.hub
                .registry
                .artifact_path(&run.artifact.as_ref().expect("artifact").sha256),
        )
        .expect("the candidate is kept");
        assert_eq!(model, good_model());
        assert_eq!(done.candidate, Some(Digest::of(&model)));
        // The gate: on the two held-out rows (temp 2 and 3, truth 4 and 5) the champion,
        // which says 1, is 3.5 off; the candidate is right.
        let gate = run.gate.as_ref().expect("gate");
        assert!(gate.wins, "{gate:?}");
        assert_eq!(gate.rows, 2);
        assert!((gate.champion - 3.5).abs() < 1e-3, "{gate:?}");
        assert!(gate.candidate < 1e-3, "{gate:?}");
        let dataset = run.dataset.as_ref().expect("dataset");
        let holdout = run.holdout.as_ref().expect("holdout");
        assert_eq!((dataset.sha256, dataset.rows), (train.sha256, 6));
        assert_eq!((holdout.sha256, holdout.rows), (held.sha256, 2));
        assert_eq!(run.params, json!({"model": "ridge", "seed": 7}));
        assert_eq!(run.seed, 7);
        assert_eq!(run.trainer.command[0], "sh");
        assert!(
            run.trainer.program_sha256.is_some(),
            "sh is found on PATH and hashed"
        );
        assert_eq!(run.metrics, Some(json!({"rows": 1})));
        assert_eq!(r.runs("demand").expect("runs").len(), 1);
        // The winner is version 2, signed by the hub's delegated key and waiting for an admin
        // (the default release).
        assert_eq!(
            (
                done.version,
                run.version,
                done.awaiting_approval,
                done.rollout
            ),
            (Some(2), Some(2), true, None)
        );
        let (record, manifest) = kit.hub.registry.find("demand", "2").expect("v2");
        let trust = kit.hub.config().trust.clone();
        assert_eq!(
            record.manifest.verify(&trust, now).expect("verifies"),
            manifest
        );
        assert_eq!(record.manifest.signer, kit.hub_key.public());
        assert_eq!(manifest.artifact.sha256, Digest::of(&model));
        let l = &manifest.lineage;
        assert_eq!(l.parent_version, Some(1));
        assert_eq!(l.training_data_digest, Some(train.sha256));
        assert_eq!(l.params["seed"], "7");
        assert_eq!(l.params["model"], "ridge");
        assert_eq!(l.params["edgefleet.run"], run.id.to_string());
        assert_eq!(l.params["edgefleet.trigger"], "manual");
        assert!(
            l.code_revision
                .as_deref()
                .is_some_and(|c| c.starts_with("sh sha256:"))
        );
        assert!(
            l.metrics["holdout_mae"] < 1e-3
                && (l.metrics["champion_holdout_mae"] - 3.5).abs() < 1e-3
        );
        assert!(
            manifest.description.contains("fuel prices jumped"),
            "{}",
            manifest.description
        );
        // Its reference: the six training rows' inputs, and the candidate's predictions on
        // them (2 + temp for temps 0, 1, 2, 3, 0, 1).
        let reference = edgefleet_common::sketch::Profile::from_bytes(
            manifest.reference_profile.as_deref().expect("a reference"),
        )
        .expect("profile");
        assert_eq!(reference.rows, 6);
        let names: Vec<_> = reference.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["price", "temp", "y"]);
        let edgefleet_common::sketch::ColumnSketch::Numeric(y) = &reference.columns[2].sketch
        else {
            panic!("y is numeric")
        };
        let mean = y.mean().expect("mean");
        assert!((mean - 19.0 / 6.0).abs() < 1e-2, "{mean}");
        // Its smoke test: the two held-out rows with the candidate's answers (4 and 5), which
        // the devices' engine reproduces.
        let [smoke] = &manifest.smoke_tests[..] else {
            panic!("one smoke test: {:?}", manifest.smoke_tests)
        };
        assert_eq!(smoke.inputs[0].shape, vec![2, 2]);
        let expected = smoke.expected[0].data.to_f64();
        assert!(
            (expected[0] - 4.0).abs() < 1e-2 && (expected[1] - 5.0).abs() < 1e-2,
            "{expected:?}"
        );
        edgefleet_engine::LoadedModel::load(
            manifest.clone(),
            &kit.hub.registry.artifact_path(&manifest.artifact.sha256),
        )
        .and_then(|m| m.smoke_test())
        .expect("the new version passes its smoke test");
        // The run's directory is gone.
        let dir = kit.hub.config().config.data_dir.join("retrain");
        assert_eq!(std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0), 0);
    }

    #[tokio::test]
    async fn a_failing_trainer_is_retried_per_policy_then_the_job_fails_with_its_reason() {
        let kit = fleet_with_samples("echo 'out of memory' >&2; exit 3").await;
        let r = &kit.hub.retrain;
        let now = crate::now();
        r.set_policy("demand", policy(4, 1), now)
            .await
            .expect("policy");
        let job = r.request("demand", "", now).await.expect("job");
        r.tick(now).await.expect("tick");
        let after_one = r.execute(job.id).await.expect("execute");
        assert_eq!((after_one.state, after_one.attempts), (JobState::Queued, 1));
        assert!(
            after_one
                .reason
                .as_deref()
                .is_some_and(|m| m.contains("exit status: 3"))
        );
        assert_eq!(r.tick(now).await.expect("tick"), vec![job.id], "the retry");
        let failed = r.execute(job.id).await.expect("execute");
        assert_eq!(
            (failed.state, failed.attempts, failed.candidate),
            (JobState::Failed, 2, None)
        );
        let runs = r.runs("demand").expect("runs");
        assert_eq!(runs.len(), 2);
        for run in &runs {
            assert!(
                matches!(run.failure, Some(RunFailure::Trainer { .. })),
                "{:?}",
                run.failure
            );
            assert_eq!(run.log, "out of memory\n");
            assert!(run.artifact.is_none());
        }
        assert_eq!(
            r.tick(now).await.expect("tick"),
            Vec::<u64>::new(),
            "no third attempt"
        );
    }

    #[tokio::test]
    async fn too_few_rows_fail_the_job_without_running_the_trainer_or_retrying() {
        let tmp = tempfile::tempdir().expect("tmp");
        let kit = fleet_with_samples(&checking(&file(&tmp, "good.onnx", &good_model()))).await;
        let r = &kit.hub.retrain;
        let now = crate::now();
        r.set_policy("demand", policy(100, 3), now)
            .await
            .expect("policy");
        let job = r.request("demand", "", now).await.expect("job");
        r.tick(now).await.expect("tick");
        let failed = r.execute(job.id).await.expect("execute");
        assert_eq!((failed.state, failed.attempts), (JobState::Failed, 1));
        let reason = failed.reason.unwrap_or_default();
        assert!(
            reason.contains("8 captured rows, the policy needs 100"),
            "{reason}"
        );
        let run = r.run(failed.runs[0]).expect("run");
        assert!(run.log.is_empty(), "the trainer did not run: {}", run.log);
        assert!(
            run.dataset.is_some(),
            "what it would have trained on is recorded"
        );
    }

    #[tokio::test]
    async fn a_run_cut_off_by_a_hub_restart_is_marked_interrupted_and_retried() {
        let tmp = tempfile::tempdir().expect("tmp");
        let kit = fleet_with_samples(&checking(&file(&tmp, "good.onnx", &good_model()))).await;
        let now = crate::now();
        kit.hub
            .retrain
            .set_policy("demand", policy(4, 1), now)
            .await
            .expect("policy");
        let job = kit
            .hub
            .retrain
            .request("demand", "", now)
            .await
            .expect("job");
        kit.hub.retrain.tick(now).await.expect("tick");
        // The hub dies with the run under way: a directory half written.
        let dir = kit
            .hub
            .config()
            .config
            .data_dir
            .join("retrain")
            .join("run-1");
        std::fs::create_dir_all(&dir).expect("dir");
        let kit = kit.restart();
        let r = &kit.hub.retrain;
        let job = r.job(job.id).expect("job");
        assert_eq!((job.state, job.attempts), (JobState::Queued, 1));
        assert!(
            job.reason
                .as_deref()
                .is_some_and(|m| m.contains("hub stopped"))
        );
        assert!(matches!(
            r.run(job.runs[0]).expect("run").failure,
            Some(RunFailure::Interrupted { .. })
        ));
        assert!(!dir.exists(), "its directory is cleared");
        assert_eq!(r.tick(now).await.expect("tick"), vec![job.id]);
        let done = r.execute(job.id).await.expect("execute");
        assert_eq!((done.state, done.attempts), (JobState::Succeeded, 2));
    }

    #[tokio::test]
    async fn schedules_cooldowns_and_the_concurrency_cap_hold() {
        let tmp = tempfile::tempdir().expect("tmp");
        let kit = fleet_with_samples(&checking(&file(&tmp, "good.onnx", &good_model()))).await;
        kit.publish("other", 1).await;
        let r = &kit.hub.retrain;
        let t0 = crate::now();
        let mut p = policy(4, 0);
        p.every_secs = Some(3600);
        p.cooldown_secs = 7200;
        r.set_policy("demand", p.clone(), t0).await.expect("policy");
        assert!(
            r.tick(t0 + 3599).await.expect("tick").is_empty(),
            "not due yet"
        );
        let started = r.tick(t0 + 3600).await.expect("tick");
        assert_eq!(started.len(), 1);
        let job = r.job(started[0]).expect("job");
        assert_eq!(job.trigger.kind, "schedule");
        assert_eq!(job.trigger.values["every_secs"], 3600);
        // A manual request for another model waits: one training at a time (the default).
        r.set_policy("other", policy(4, 0), t0)
            .await
            .expect("policy");
        let other = r.request("other", "", t0 + 3600).await.expect("job");
        assert!(
            r.tick(t0 + 3601).await.expect("tick").is_empty(),
            "capacity is one"
        );
        r.execute(job.id).await.expect("execute");
        assert_eq!(r.tick(t0 + 3602).await.expect("tick"), vec![other.id]);
        // Due again an hour later, but the cooldown (2 h after the last start) holds it.
        assert!(
            r.jobs()
                .expect("jobs")
                .iter()
                .filter(|j| j.model == "demand")
                .count()
                == 1
        );
        r.execute(other.id).await.expect("execute");
        r.tick(t0 + 7300).await.expect("tick");
        assert_eq!(
            r.jobs()
                .expect("jobs")
                .iter()
                .filter(|j| j.model == "demand")
                .count(),
            1
        );
        r.tick(t0 + 3600 + 7200).await.expect("tick");
        assert_eq!(
            r.jobs()
                .expect("jobs")
                .iter()
                .filter(|j| j.model == "demand")
                .count(),
            2
        );
    }

    #[tokio::test]
    async fn a_candidate_that_loses_is_rejected_and_the_champion_stays() {
        let tmp = tempfile::tempdir().expect("tmp");
        // The champion is the good model now; the candidate the flat one.
        let kit = kit(&checking(&file(&tmp, "flat.onnx", &flat_model())));
        kit.publish_artifact("demand", 1, good_model()).await;
        let key = kit.enroll("shop-1", &[], true).await;
        let now = crate::now();
        capture(&kit, &key, "shop-1", 1, now - 600, 4).await;
        capture(&kit, &key, "shop-1", 2, now - 300, 4).await;
        let r = &kit.hub.retrain;
        r.set_policy("demand", policy(4, 2), now)
            .await
            .expect("policy");
        let job = r.request("demand", "", now).await.expect("job");
        r.tick(now).await.expect("tick");
        let done = r.execute(job.id).await.expect("execute");
        assert_eq!(
            (done.state, done.attempts, done.candidate),
            (JobState::Rejected, 1, None)
        );
        let reason = done.reason.unwrap_or_default();
        assert!(reason.contains("the champion stays"), "{reason}");
        let run = r.run(done.runs[0]).expect("run");
        assert!(!run.gate.expect("gate").wins);
        assert!(
            run.artifact.is_some(),
            "the losing candidate is kept for inspection"
        );
        assert_eq!(
            r.tick(now).await.expect("tick"),
            Vec::<u64>::new(),
            "not retried"
        );
    }

    #[tokio::test]
    async fn a_candidate_that_is_no_model_or_has_other_tensors_fails_the_job_cleanly() {
        let tmp = tempfile::tempdir().expect("tmp");
        // Bytes that are no ONNX, and a model with three inputs where the champion has two.
        let other = {
            let data = edgefleet_trainer::Dataset {
                x: vec![1.0, 2.0, 3.0, 2.0, 1.0, 0.0, 5.0, 5.0, 1.0],
                y: vec![1.0, 2.0, 3.0],
                features: vec!["a".into(), "b".into(), "c".into()],
                target: "y".into(),
                skipped: 0,
            };
            let sig = edgefleet_trainer::Signature {
                input: "x".into(),
                features: 3,
                feature_names: vec![],
                output: "y".into(),
                flat_output: false,
                classifier: None,
            };
            let params = edgefleet_trainer::Params {
                validation: 0.0,
                ..Default::default()
            };
            edgefleet_trainer::train(&data, &params, &sig)
                .expect("fit")
                .onnx
        };
        for (name, bytes, needle) in [
            ("junk.onnx", b"not a model".to_vec(), "does not load"),
            ("wide.onnx", other, "does not load"),
        ] {
            let kit = fleet_with_samples(&checking(&file(&tmp, name, &bytes))).await;
            let r = &kit.hub.retrain;
            let now = crate::now();
            r.set_policy("demand", policy(4, 2), now)
                .await
                .expect("policy");
            let job = r.request("demand", "", now).await.expect("job");
            r.tick(now).await.expect("tick");
            let done = r.execute(job.id).await.expect("execute");
            assert_eq!(
                (done.state, done.attempts),
                (JobState::Failed, 1),
                "{name}: not retried"
            );
            let reason = done.reason.unwrap_or_default();
            assert!(reason.contains(needle), "{name}: {reason}");
            assert!(matches!(
                r.run(done.runs[0]).expect("run").failure,
                Some(RunFailure::Candidate { .. })
            ));
            assert_eq!(done.candidate, None);
        }
    }

    #[tokio::test]
    async fn bad_policies_are_refused_with_every_problem_named() {
        let kit = kit("exit 1");
        kit.publish("demand", 1).await;
        let r = &kit.hub.retrain;
        let bad = PolicyRequest {
            params: json!({"seed": 1}).as_object().cloned().unwrap_or_default(),
            every_secs: Some(60),
            retries: 99,
            min_rows: 0,
            holdout: 0.9,
            ..PolicyRequest::default()
        };
        let Err(HubError::Invalid(msg)) = r.set_policy("demand", bad, 0).await else {
            panic!("accepted")
        };
        for key in [
            "params.seed",
            "every_secs",
            "retries",
            "min_rows",
            "holdout",
        ] {
            assert!(msg.contains(key), "{key} missing from {msg}");
        }
        assert!(matches!(
            r.set_policy("nosuch", PolicyRequest::default(), 0).await,
            Err(HubError::NotFound(_))
        ));
        assert!(matches!(
            r.request("demand", "two\nlines", 0).await,
            Err(HubError::Invalid(_))
        ));
    }

    /// A fleet whose job 1 made v2 under `p` (the good candidate, trained by a script).
    async fn retrained(tmp: &tempfile::TempDir, p: PolicyRequest) -> (Kit, crate::retrain::Job) {
        let kit = fleet_with_samples(&checking(&file(tmp, "good.onnx", &good_model()))).await;
        let r = &kit.hub.retrain;
        let now = crate::now();
        r.set_policy("demand", p, now).await.expect("policy");
        let job = r.request("demand", "", now).await.expect("job");
        r.tick(now).await.expect("tick");
        let done = r.execute(job.id).await.expect("execute");
        (kit, done)
    }

    #[tokio::test]
    async fn an_approved_version_gets_its_rollout_and_the_lineage_shows_the_chain() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (kit, job) = retrained(&tmp, policy(4, 0)).await;
        let r = &kit.hub.retrain;
        assert_eq!((job.state, job.version), (JobState::Succeeded, Some(2)));
        assert!(job.awaiting_approval, "{job:?}");
        assert!(
            job.release_note
                .as_deref()
                .is_some_and(|n| n.contains("edgefleet approve-model demand 2")),
            "{job:?}"
        );
        assert!(
            kit.hub.rollouts.list().expect("rollouts").is_empty(),
            "nothing moves by itself"
        );
        // Only a waiting version of a job can be approved, and a bad rollout is refused.
        assert!(matches!(
            r.approve("demand", 1, None).await,
            Err(HubError::NotFound(m)) if m.contains("no retraining job published demand v1")
        ));
        let bad = json!({"waves": [{"percent": 50.0}], "version": 9});
        assert!(matches!(
            r.approve("demand", 2, bad.as_object().cloned()).await,
            Err(HubError::Invalid(m)) if m.contains("rollout.version")
        ));
        let spec = json!({"waves": [{"devices": 1}, {"percent": 100.0}], "bake_secs": 0});
        let approved = r
            .approve("demand", 2, spec.as_object().cloned())
            .await
            .expect("approve");
        let id = approved.rollout.expect("a rollout");
        assert!(!approved.awaiting_approval);
        let rollout = kit.hub.rollouts.get(id).expect("rollout");
        assert_eq!(
            (rollout.spec.model.as_str(), rollout.spec.version),
            ("demand", 2)
        );
        assert_eq!(rollout.spec.waves.len(), 2);
        assert!(matches!(
            r.approve("demand", 2, None).await,
            Err(HubError::Conflict(m)) if m.contains(&format!("rollout {id}"))
        ));
        // The lineage: v2 with its trigger, run, gate and rollout; then v1, by hand.
        let chain = r.lineage("demand", 2).expect("lineage");
        assert_eq!(chain.iter().map(|s| s.version).collect::<Vec<_>>(), [2, 1]);
        let v2 = &chain[0];
        assert_eq!(
            v2.job.as_ref().map(|j| j.trigger.kind.as_str()),
            Some("manual")
        );
        let run = v2.run.as_ref().expect("run");
        assert!(run.gate.as_ref().is_some_and(|g| g.wins));
        assert!(run.log.is_empty(), "the log is left out of the lineage");
        assert_eq!(v2.rollouts.len(), 1);
        assert_eq!(v2.rollouts[0].id, id);
        assert_eq!(v2.lineage.parent_version, Some(1));
        assert!(chain[1].job.is_none() && chain[1].run.is_none());
        assert!(matches!(r.lineage("demand", 9), Err(HubError::NotFound(_))));
    }

    #[tokio::test]
    async fn a_hub_stopped_after_publishing_finds_the_version_waiting_not_a_run_to_retry() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (kit, job) = retrained(&tmp, policy(4, 1)).await;
        // The store as it was if the hub stopped right after publishing: the run records v2,
        // the job is still running.
        let mut cut = kit.hub.retrain.job(job.id).expect("job");
        cut.state = JobState::Running;
        cut.version = None;
        cut.awaiting_approval = false;
        cut.release_note = None;
        kit.hub
            .retrain
            .store
            .put_job(cut.id, &crate::retrain::to_json(&cut).expect("json"))
            .expect("put");
        kit.hub.flush().await.expect("flush");
        let kit = kit.restart();
        let r = &kit.hub.retrain;
        let after = r.job(job.id).expect("job");
        assert_eq!(
            (after.state, after.version, after.awaiting_approval),
            (JobState::Succeeded, Some(2), true),
            "{after:?}"
        );
        assert!(
            after
                .release_note
                .as_deref()
                .is_some_and(|n| n.contains("stopped before handing v2 on")),
            "{after:?}"
        );
        assert!(
            r.tick(crate::now()).await.expect("tick").is_empty(),
            "no retry"
        );
        assert_eq!(
            kit.hub
                .registry
                .get("demand")
                .expect("model")
                .versions
                .len(),
            2
        );
        let approved = r.approve("demand", 2, None).await.expect("approve");
        assert!(approved.rollout.is_some());
    }

    #[tokio::test]
    async fn a_rollout_policy_hands_the_version_to_a_staged_rollout_at_once() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut p = policy(4, 0);
        p.release = crate::retrain::Release::Rollout;
        p.rollout = json!({"waves": [{"percent": 100.0}], "bake_secs": 0})
            .as_object()
            .cloned();
        let (kit, job) = retrained(&tmp, p).await;
        let id = job.rollout.expect("a rollout at once");
        assert!(!job.awaiting_approval);
        let rollout = kit.hub.rollouts.get(id).expect("rollout");
        assert_eq!(rollout.spec.version, 2);
        assert_eq!(rollout.spec.waves.len(), 1);
        // The next job's candidate is the same model: it does not beat the new champion.
        let r = &kit.hub.retrain;
        let second = r
            .request("demand", "again", crate::now())
            .await
            .expect("job");
        r.tick(crate::now()).await.expect("tick");
        let done = r.execute(second.id).await.expect("execute");
        assert_eq!(done.state, JobState::Rejected, "{done:?}");
        assert_eq!(
            kit.hub
                .registry
                .get("demand")
                .expect("model")
                .versions
                .len(),
            2
        );
    }

    #[tokio::test]
    async fn a_version_whose_rollout_would_overlap_a_running_one_waits_for_an_admin() {
        let tmp = tempfile::tempdir().expect("tmp");
        let kit = fleet_with_samples(&checking(&file(&tmp, "good.onnx", &good_model()))).await;
        let running = kit
            .hub
            .rollouts
            .create(crate::retrain::policy::rollout_spec(None, "demand", 1).expect("spec"))
            .await
            .expect("a rollout of v1");
        let r = &kit.hub.retrain;
        let now = crate::now();
        let mut p = policy(4, 0);
        p.release = crate::retrain::Release::Rollout;
        r.set_policy("demand", p, now).await.expect("policy");
        let job = r.request("demand", "", now).await.expect("job");
        r.tick(now).await.expect("tick");
        let done = r.execute(job.id).await.expect("execute");
        assert_eq!(
            (done.state, done.version, done.rollout),
            (JobState::Succeeded, Some(2), None)
        );
        assert!(done.awaiting_approval);
        let note = done.release_note.unwrap_or_default();
        assert!(
            note.contains(&format!("rollout {}", running.id))
                && note.contains("approve-model demand 2"),
            "{note}"
        );
    }

    #[tokio::test]
    async fn bad_rollout_templates_in_a_policy_are_refused() {
        let kit = fleet_with_samples("exit 1").await;
        let mut p = policy(4, 0);
        p.rollout = json!({"waves": [{"percent": 50.0}], "model": "x", "colour": 1})
            .as_object()
            .cloned();
        let err = kit
            .hub
            .retrain
            .set_policy("demand", p.clone(), crate::now())
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("rollout.model"), "{err}");
        p.rollout = json!({"waves": [{"percent": 50.0}], "colour": 1})
            .as_object()
            .cloned();
        let err = kit
            .hub
            .retrain
            .set_policy("demand", p, crate::now())
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("colour"), "{err}");
    }

    /// A window's telemetry from `device` whose ground truth scored `right` of `rows` labels of
    /// `demand` v1 right.
    async fn report_accuracy(
        kit: &Kit,
        key: &SecretKey,
        device: &str,
        seq: u64,
        end: u64,
        (right, rows): (u64, u64),
    ) {
        use edgefleet_common::quality::ModelQuality;
        use edgefleet_common::sketch::{ColumnKind, ColumnSpec, DEFAULT_K, LatencySketch, Profile};
        use edgefleet_common::telemetry::{ModelWindow, TelemetryRecord};
        let mut quality = ModelQuality::new("demand", 1);
        for i in 0..rows {
            let (predicted, p_true) = if i < right { ("1", 0.8) } else { ("0", 0.3) };
            quality
                .score_label(predicted, "1", Some(p_true), false)
                .expect("score");
        }
        // The columns the devices profile for v1 (its inputs, labels and probabilities).
        let (_, manifest) = kit.hub.registry.find("demand", "1").expect("v1");
        let specs: Vec<_> = edgefleet_common::sketch::model_columns(&manifest)
            .into_iter()
            .map(|c| ColumnSpec {
                name: c.name,
                kind: ColumnKind::Numeric,
            })
            .collect();
        let mut profile = Profile::new(&specs, DEFAULT_K).expect("profile");
        profile.update_row(&vec![1.0; specs.len()]).expect("row");
        let mut latency = LatencySketch::default();
        latency.record_us(100.0);
        let record = TelemetryRecord {
            device_id: device.into(),
            seq,
            window_start: end - 60,
            window_end: end,
            models: vec![ModelWindow {
                model: "demand".into(),
                version: 1,
                profile: profile.to_bytes(),
                latency: latency.into(),
                requests: rows,
                errors: 0,
            }],
            health: Default::default(),
            outbox: Default::default(),
            agent_version: "test".into(),
            quality: vec![quality],
        };
        deliver(kit, key, device, seq, &record, |device, payload| {
            Message::Record { device, payload }
        })
        .await;
    }

    /// A classifier's loop at the job level: its accuracy from ground truth falls (the shop's
    /// rule for a busy day moved: busy when it is 3° warmer than the price, no longer when
    /// warmer at all), the quality trigger starts a job with the values that fired it, the
    /// candidate (a logistic regression of the new rule) beats the champion on the held-out
    /// labels' accuracy, and the signed version, a classifier with its labels and probabilities
    /// and a smoke test the engine passes, goes straight to a staged rollout.
    #[tokio::test]
    async fn a_classifiers_accuracy_drop_retrains_it_and_the_winner_is_rolled_out() {
        let grid: Vec<(f64, f64)> = (0..10)
            .flat_map(|i| (0..20).map(move |j| (f64::from(i) * 0.5, f64::from(j) * 0.5 + 0.25)))
            .collect();
        let rule =
            |shift: f64| move |&(p, t): &(f64, f64)| (p, t, f64::from(u8::from(t > p + shift)));
        let champion =
            crate::testkit::fit_price_temp(&grid.iter().map(rule(0.0)).collect::<Vec<_>>(), true);
        let candidate =
            crate::testkit::fit_price_temp(&grid.iter().map(rule(3.0)).collect::<Vec<_>>(), true);
        let tmp = tempfile::tempdir().expect("tmp");
        let kit = kit(&checking(&file(&tmp, "candidate.onnx", &candidate)));
        kit.publish_classifier("demand", 1, champion).await;
        let key = kit.enroll("shop-1", &[], true).await;
        let now = crate::now();
        // The captured days, spread over the grid, with the champion's labels and the truth.
        let label = |b: bool| Value::Label(if b { "1" } else { "0" }.into());
        let half = grid.len() as u64 / 2;
        let rows: Vec<SampleRow> = (0..grid.len() as u64)
            .map(|k| {
                let (p, t) = grid[(k * 37) as usize % grid.len()];
                SampleRow {
                    // The older half in a window ending at now - 300, the newer one at now.
                    made_at: if k < half {
                        now - 300 - half + k
                    } else {
                        now - half + (k - half)
                    },
                    inputs: vec![p, t],
                    predicted: vec![label(t > p)],
                    truth: vec![label(t > p + 3.0)],
                }
            })
            .collect();
        let (older, newer) = rows.split_at(rows.len() / 2);
        capture_rows(&kit, &key, "shop-1", 1, now - 300, older.to_vec()).await;
        capture_rows(&kit, &key, "shop-1", 2, now, newer.to_vec()).await;
        // Two hours ago 9 in 10 labels were right; this hour, half.
        report_accuracy(
            &kit,
            &key,
            "shop-1",
            3,
            now - 2 * crate::telemetry::HOUR,
            (270, 300),
        )
        .await;
        report_accuracy(&kit, &key, "shop-1", 4, now, (150, 300)).await;
        let held = kit
            .hub
            .telemetry
            .store()
            .quality("demand", 1, crate::telemetry::ALL, 0, u64::MAX)
            .expect("read")
            .expect("the hub holds the devices' accuracy");
        assert_eq!((held.matched, held.accuracy()), (600, Some(0.7)));

        let r = &kit.hub.retrain;
        let mut p = policy(100, 0);
        p.params = json!({"model": "logistic"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        p.quality = Some(crate::retrain::QualityTrigger {
            metric: crate::retrain::QualityMetric::Accuracy,
            ratio: 1.3,
            min_matched: 200,
            hours: 1,
            baseline_hours: 24,
        });
        p.release = crate::retrain::Release::Rollout;
        p.rollout = json!({"waves": [{"percent": 50.0}, {"percent": 100.0}], "bake_secs": 60})
            .as_object()
            .cloned();
        r.set_policy("demand", p, now).await.expect("policy");
        let started = r.tick(now).await.expect("tick");
        let [id] = started[..] else {
            panic!("one job: {started:?}")
        };
        let job = r.job(id).expect("job");
        assert_eq!(job.trigger.kind, "quality", "{:?}", job.trigger);
        let v = &job.trigger.values;
        assert_eq!(v["metric"], "accuracy");
        assert!(
            (v["baseline"].as_f64().unwrap_or(0.0) - 0.9).abs() < 1e-9,
            "{v}"
        );
        assert!((v["now"].as_f64().unwrap_or(0.0) - 0.5).abs() < 1e-9, "{v}");
        assert_eq!(
            (v["baseline_matched"].as_u64(), v["now_matched"].as_u64()),
            (Some(300), Some(300))
        );
        assert!(
            job.trigger
                .detail
                .starts_with("accuracy of version 1 went from 0.9000 to 0.5000"),
            "{}",
            job.trigger.detail
        );

        let done = r.execute(id).await.expect("execute");
        let run = r.run(done.runs[0]).expect("run");
        assert_eq!(
            done.state,
            JobState::Succeeded,
            "{:?} {}",
            run.failure,
            run.log
        );
        assert_eq!(run.log, "training on 150 rows\n");
        // Judged on accuracy over the 50 newest labels, which the champion's old rule gets
        // wrong wherever it is warmer than the price by less than 3°.
        let gate = run.gate.as_ref().expect("gate");
        assert_eq!(
            (gate.metric.as_str(), gate.rows),
            ("accuracy", 50),
            "{gate:?}"
        );
        assert!(
            gate.wins && gate.candidate > 0.95 && gate.champion < 0.85,
            "{gate:?}"
        );
        // Version 2 is a classifier like its parent, signed, with a smoke test of held-out
        // rows and the candidate's own labels and probabilities, which the engine reproduces.
        assert_eq!(done.version, Some(2));
        let (record, manifest) = kit.hub.registry.find("demand", "2").expect("v2");
        assert_eq!(
            record
                .manifest
                .verify(&kit.hub.config().trust, now)
                .expect("verifies"),
            manifest
        );
        let outputs: Vec<_> = manifest
            .outputs
            .iter()
            .map(|o| (o.name.as_str(), o.datatype, o.shape.clone()))
            .collect();
        assert_eq!(
            outputs,
            [
                ("y", DataType::Int64, vec![-1]),
                ("p", DataType::Fp32, vec![-1, 2])
            ]
        );
        assert!(
            manifest.lineage.metrics["holdout_accuracy"] > 0.95,
            "{:?}",
            manifest.lineage.metrics
        );
        let [smoke] = &manifest.smoke_tests[..] else {
            panic!("one smoke test: {:?}", manifest.smoke_tests)
        };
        assert_eq!(smoke.expected.len(), 2, "labels and probabilities");
        edgefleet_engine::LoadedModel::load(
            manifest.clone(),
            &kit.hub.registry.artifact_path(&manifest.artifact.sha256),
        )
        .and_then(|m| m.smoke_test())
        .expect("the new version passes its smoke test");
        // The policy's rollout: two waves, at once, no admin needed.
        assert!(!done.awaiting_approval);
        let rollout = kit
            .hub
            .rollouts
            .get(done.rollout.expect("a rollout"))
            .expect("rollout");
        assert_eq!((rollout.spec.version, rollout.spec.waves.len()), (2, 2));
    }

    #[tokio::test]
    async fn a_hub_not_delegated_for_the_model_publishes_nothing_and_says_how_to_fix_it() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut kit = fleet_with_samples(&checking(&file(&tmp, "good.onnx", &good_model()))).await;
        kit.redelegate(&["demand"], &[edgefleet_common::Permission::Assignments]);
        let r = &kit.hub.retrain;
        let now = crate::now();
        r.set_policy("demand", policy(4, 2), now)
            .await
            .expect("policy");
        let job = r.request("demand", "", now).await.expect("job");
        r.tick(now).await.expect("tick");
        let failed = r.execute(job.id).await.expect("execute");
        assert_eq!(
            (failed.state, failed.attempts, failed.version),
            (JobState::Failed, 1, None),
            "no retry: {failed:?}"
        );
        let reason = failed.reason.unwrap_or_default();
        assert!(
            reason.contains("edgefleet delegate --models demand --permission manifests"),
            "{reason}"
        );
        assert!(matches!(
            r.run(failed.runs[0]).expect("run").failure,
            Some(RunFailure::Signing { .. })
        ));
        assert_eq!(
            kit.hub
                .registry
                .get("demand")
                .expect("model")
                .versions
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn a_recorded_run_run_again_makes_the_same_bytes_and_a_changed_trainer_does_not() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (good, flat) = (
            file(&tmp, "good.onnx", &good_model()),
            file(&tmp, "flat.onnx", &flat_model()),
        );
        // Each run leaves a copy of its whole job directory's inputs behind (seen-N), so the
        // test can compare what the reproduction was given with what the run was.
        let script = format!(
            r#"set -e
n=$(ls '{seen}' | wc -l)
mkdir -p '{seen}'/$n && cp -r dataset.csv dataset.schema.json params.json parent '{seen}'/$n/
cp '{good}' model.onnx
[ ! -e '{switch}' ] || cp '{flat}' model.onnx
echo '{{}}' > metrics.json"#,
            seen = tmp.path().join("seen").display(),
            good = good.display(),
            flat = flat.display(),
            switch = tmp.path().join("switch").display(),
        );
        std::fs::create_dir_all(tmp.path().join("seen")).expect("mkdir");
        let kit = fleet_with_samples(&script).await;
        let r = &kit.hub.retrain;
        let now = crate::now();
        r.set_policy("demand", policy(4, 0), now)
            .await
            .expect("policy");
        let job = r.request("demand", "", now).await.expect("job");
        r.tick(now).await.expect("tick");
        let done = r.execute(job.id).await.expect("execute");
        let run_id = done.runs[0];
        let again = r.reproduce(run_id).await.expect("reproduce");
        assert!(again.identical && again.same_trainer, "{again:?}");
        assert_eq!(again.artifact.as_ref(), Some(&again.recorded));
        // The reproduction was given exactly the run's inputs, byte for byte.
        let seen = tmp.path().join("seen");
        for f in [
            "dataset.csv",
            "dataset.schema.json",
            "params.json",
            "parent/manifest.json",
            "parent/model.onnx",
        ] {
            assert_eq!(
                std::fs::read(seen.join("0").join(f)).expect("run"),
                std::fs::read(seen.join("1").join(f)).expect("reproduction"),
                "{f}"
            );
        }
        // A trainer that now makes other bytes is caught.
        std::fs::write(tmp.path().join("switch"), "").expect("switch");
        let changed = r.reproduce(run_id).await.expect("reproduce");
        assert!(!changed.identical, "{changed:?}");
        assert_eq!(
            changed.artifact.as_ref().map(|a| a.sha256),
            Some(Digest::of(&flat_model()))
        );
        // An unknown run is not found (one that made no model: tests/tests/trainer.rs).
        assert!(matches!(
            r.reproduce(9999).await,
            Err(HubError::NotFound(_))
        ));
        // No directory is left behind.
        let dir = kit.hub.config().config.data_dir.join("retrain");
        assert_eq!(std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0), 0);
    }

    /// A drift trigger that flaps — fires, clears, fires again every few minutes — starts one
    /// job per cooldown, never one per flap.
    #[test]
    fn a_flapping_trigger_starts_one_job_per_cooldown() {
        use crate::retrain::{Job, Policy, Trigger};
        let p = Policy {
            model: "demand".into(),
            policy: PolicyRequest {
                cooldown_secs: 3600,
                ..PolicyRequest::default()
            },
            set_at: 0,
        };
        let drift = || Trigger {
            kind: "drift".into(),
            detail: "fuel_price".into(),
            values: json!({}),
        };
        let mut jobs: Vec<Job> = Vec::new();
        let t0 = 10_000;
        for minute in 0..(3 * 60) {
            let now = t0 + minute * 60;
            // Drifted in odd minutes only: a trigger that flaps.
            let fired = (minute % 2 == 1).then(drift);
            if let Some(t) = super::super::due(&p, &jobs, fired, now) {
                jobs.push(Job {
                    id: jobs.len() as u64 + 1,
                    model: "demand".into(),
                    parent: 1,
                    trigger: t,
                    state: JobState::Rejected,
                    attempts: 1,
                    max_attempts: 1,
                    created_at: now,
                    updated_at: now,
                    reason: None,
                    runs: vec![],
                    candidate: None,
                    version: None,
                    rollout: None,
                    awaiting_approval: false,
                    release_note: None,
                });
            }
        }
        let starts: Vec<u64> = jobs.iter().map(|j| j.created_at - t0).collect();
        assert_eq!(
            starts,
            [60, 3660, 7260],
            "one job an hour over 3 hours of flapping"
        );
        // While a job is under way nothing else starts, cooled down or not.
        let mut busy = jobs.clone();
        busy[2].state = JobState::Running;
        assert!(super::super::due(&p, &busy, Some(drift()), t0 + 100_000).is_none());
    }
}
