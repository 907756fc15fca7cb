//! Retraining: the closed loop's hub side (issue: the closed loop). A model with a policy gets
//! jobs (an admin's request, a schedule, drift on the devices, a drop in quality from ground
//! truth); the retraining driver (`drivers::retrain`) starts
//! queued jobs as capacity allows, and each run prepares a job directory, runs the trainer
//! under the contract of docs/trainers.md and records exactly what went in and came out.
//! A candidate that beats the champion is signed with the hub's delegated key and published
//! as the next version, then handed to a staged rollout or left for an admin's approval, per
//! policy ([`release`]).
//!
//! - [`policy`]: a model's policy (params, seed, schedule, cooldown, retries, rows needed,
//!   holdout share);
//! - [`gate`]: champion against challenger on the held-out rows, with the devices' engine;
//! - [`candidate`]: the winner's manifest (reference profile, smoke tests, lineage);
//! - [`release`]: signing, publishing, the rollout or the approval, lineage, reproduction;
//! - [`job`]: the job and run records;
//! - [`trigger`]: the drift and quality judgements;
//! - [`runner`]: one trainer run: its own process group, an empty environment but `PATH`, a
//!   timeout, a cap on the job directory's size, its output kept (bounded), the model and
//!   metrics checked before anything is reported as a success.
//!
//! Rules:
//! - a job records why it started (the trigger and its values) before it is queued;
//! - a run records its dataset's digest, the held-out rows' digest, params, seed and the
//!   trainer's command and program digest before the trainer starts, so a run the hub never
//!   saw finish is still described;
//! - the trainer never sees the held-out rows (they stay outside its job directory);
//! - a failed run yields no candidate; a job is retried only for failures another attempt can
//!   get past (not too few rows), up to the policy's retries;
//! - a run the hub stopped during is marked interrupted at the next start, never left running;
//! - a version is published only for a candidate that won its gate, signed by the hub's
//!   delegated key (never root's), and the job records it before any rollout is made.

pub mod candidate;
pub mod gate;
pub mod job;
pub mod policy;
pub mod release;
pub mod runner;
pub mod trigger;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use edgefleet_common::{Digest, name};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub use job::{Artifact, DatasetRef, Job, JobState, Run, RunFailure, TrainerRef, Trigger};
pub use policy::{Policy, PolicyRequest, Release};
pub use release::{LineageStep, Reproduction};
pub use runner::{Failure, RunReport, TrainerCommand};
pub use trigger::{DriftTrigger, QualityMetric, QualityTrigger};

use crate::config::SharedConfig;
use crate::error::{HubError, HubResult};
use crate::registry::Registry;
use crate::rollout::Rollouts;
use crate::store::Store;
use crate::telemetry::Telemetry;
use crate::telemetry::samples::{Dataset, SamplesQuery};

/// Longest reason an admin may give for a manual request.
pub const MAX_REASON_BYTES: usize = 500;
/// How much of a trainer's output a run keeps.
pub const MAX_LOG_BYTES: usize = 64 * 1024;
/// The name of the reference trainer's program.
pub const REFERENCE_TRAINER: &str = "edgefleet-train";
/// How often drift and quality triggers are judged (each judgement reads every device's
/// latest window).
pub const JUDGE_EVERY_SECS: u64 = 5;

#[derive(Clone)]
pub struct Retrain {
    store: Store,
    registry: Registry,
    telemetry: Telemetry,
    rollouts: Rollouts,
    config: SharedConfig,
    /// Job creation and starts read, decide and write the same records: one at a time.
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Each device's run of drifted windows, and when triggers were last judged.
    streaks: Arc<std::sync::Mutex<(trigger::Streaks, u64)>>,
}

fn to_json<T: Serialize>(v: &T) -> HubResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| HubError::Internal(e.to_string()))
}

fn pretty<T: Serialize + ?Sized>(v: &T) -> HubResult<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| HubError::Internal(e.to_string()))
}

fn from_json<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> HubResult<T> {
    serde_json::from_slice(bytes).map_err(|e| HubError::Internal(format!("stored {what}: {e}")))
}

impl Retrain {
    /// The domain over `store`; runs the hub stopped during are marked interrupted (and
    /// their jobs queued again or failed, per their retries) and their directories cleared.
    pub fn open(
        store: Store,
        registry: Registry,
        telemetry: Telemetry,
        rollouts: Rollouts,
        config: SharedConfig,
    ) -> HubResult<Self> {
        let r = Self {
            store,
            registry,
            telemetry,
            rollouts,
            config,
            lock: Default::default(),
            streaks: Default::default(),
        };
        r.recover(crate::now())?;
        Ok(r)
    }

    fn runs_dir(&self) -> PathBuf {
        self.config.load().config.data_dir.join("retrain")
    }

    fn recover(&self, now: u64) -> HubResult<()> {
        for mut job in self.jobs()? {
            if job.state != JobState::Running {
                continue;
            }
            let failure = RunFailure::Interrupted {
                message: "the hub stopped during the run".into(),
            };
            // A run that got as far as publishing is a success whose hand-over was cut off.
            let published = job
                .runs
                .last()
                .and_then(|&id| self.run(id).ok())
                .and_then(|r| r.version.map(|v| (v, r.artifact.map(|a| a.sha256))));
            if let Some((version, candidate)) = published {
                job.state = JobState::Succeeded;
                job.reason = None;
                job.version = Some(version);
                job.candidate = candidate;
                job.updated_at = now;
                match self.rollout_of(&job.model, version)? {
                    Some(r) => {
                        job.rollout = Some(r);
                        job.awaiting_approval = false;
                        job.release_note = Some(format!("handed to rollout {r}"));
                    }
                    None => {
                        job.awaiting_approval = true;
                        job.release_note = Some(format!(
                            "the hub stopped before handing v{version} on; {}",
                            release::approval_note(&job.model, version)
                        ));
                    }
                }
                tracing::warn!(job = job.id, model = %job.model, version, "a hub restart cut off a published version's hand-over");
                self.store.put_job(job.id, &to_json(&job)?)?;
                continue;
            }
            if let Some(&id) = job.runs.last()
                && let Ok(mut run) = self.run(id)
                && run.failure.is_none()
                && run.artifact.is_none()
            {
                run.failure = Some(failure.clone());
                self.store.put_run(id, &to_json(&run)?)?;
            }
            settle(&mut job, Err(failure), None, now);
            tracing::warn!(job = job.id, model = %job.model, state = ?job.state, "a retraining run was interrupted by a hub restart");
            self.store.put_job(job.id, &to_json(&job)?)?;
        }
        // No run is under way at start: whatever a run left behind is garbage.
        let dir = self.runs_dir();
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        Ok(())
    }

    // ---- policies ----

    pub async fn set_policy(&self, model: &str, req: PolicyRequest, now: u64) -> HubResult<Policy> {
        name::validate(model)?;
        req.validate().map_err(HubError::Invalid)?;
        self.registry.get(model)?;
        let p = Policy {
            model: model.to_owned(),
            policy: req,
            set_at: now,
        };
        self.store.put_retrain_policy(model, Some(&to_json(&p)?))?;
        self.store.flush().await?;
        tracing::info!(model, "retraining policy set");
        Ok(p)
    }

    pub fn policy(&self, model: &str) -> HubResult<Option<Policy>> {
        name::validate(model)?;
        self.store
            .retrain_policy(model)?
            .map(|b| from_json("retraining policy", &b))
            .transpose()
    }

    /// Removes a model's policy: no job starts for it any more (queued ones fail when their
    /// turn comes). Whether there was one.
    pub async fn delete_policy(&self, model: &str) -> HubResult<bool> {
        let had = self.policy(model)?.is_some();
        self.store.put_retrain_policy(model, None)?;
        self.store.flush().await?;
        Ok(had)
    }

    pub fn policies(&self) -> HubResult<Vec<Policy>> {
        self.store
            .retrain_policies()?
            .iter()
            .map(|b| from_json("retraining policy", b))
            .collect()
    }

    // ---- jobs and runs ----

    /// Every job, oldest first.
    pub fn jobs(&self) -> HubResult<Vec<Job>> {
        self.store
            .jobs()?
            .iter()
            .map(|b| from_json("retraining job", b))
            .collect()
    }

    pub fn job(&self, id: u64) -> HubResult<Job> {
        let b = self
            .store
            .job(id)?
            .ok_or_else(|| HubError::NotFound(format!("no retraining job {id}")))?;
        from_json("retraining job", &b)
    }

    pub fn run(&self, id: u64) -> HubResult<Run> {
        let b = self
            .store
            .run(id)?
            .ok_or_else(|| HubError::NotFound(format!("no training run {id}")))?;
        from_json("training run", &b)
    }

    /// A model's runs, oldest first.
    pub fn runs(&self, model: &str) -> HubResult<Vec<Run>> {
        name::validate(model)?;
        let mut runs = Vec::new();
        for b in self.store.runs()? {
            let r: Run = from_json("training run", &b)?;
            if r.model == model {
                runs.push(r);
            }
        }
        Ok(runs)
    }

    /// An admin's request to retrain `model` now. It needs a policy; it is not held back by
    /// the cooldown, but one model has one job at a time.
    pub async fn request(&self, model: &str, reason: &str, now: u64) -> HubResult<Job> {
        name::validate(model)?;
        if reason.len() > MAX_REASON_BYTES || reason.chars().any(char::is_control) {
            return Err(HubError::Invalid(format!(
                "reason: at most {MAX_REASON_BYTES} bytes, one line"
            )));
        }
        let _one = self.lock.lock().await;
        let policy = self.policy(model)?.ok_or_else(|| {
            HubError::Conflict(format!(
                "{model} has no retraining policy: set one first (`edgefleet retrain policy {model} --file POLICY.json`)"
            ))
        })?;
        if let Some(j) = self
            .jobs()?
            .into_iter()
            .find(|j| j.model == model && j.state.is_active())
        {
            return Err(HubError::Conflict(format!(
                "job {} of {model} is already {:?}: one job per model at a time (`edgefleet retrain jobs {model}`)",
                j.id, j.state
            )));
        }
        let detail = if reason.is_empty() {
            "requested by an admin".to_owned()
        } else {
            format!("requested by an admin: {reason}")
        };
        let trigger = Trigger {
            kind: "manual".into(),
            detail,
            values: json!({ "reason": reason }),
        };
        self.create_job(&policy, trigger, now).await
    }

    async fn create_job(&self, policy: &Policy, trigger: Trigger, now: u64) -> HubResult<Job> {
        let parent = self
            .registry
            .get(&policy.model)?
            .versions
            .last()
            .map(|v| v.version)
            .ok_or_else(|| HubError::NotFound(format!("{} has no version", policy.model)))?;
        let job = Job {
            id: self.store.next_job_id()?,
            model: policy.model.clone(),
            parent,
            trigger,
            state: JobState::Queued,
            attempts: 0,
            max_attempts: 1 + policy.policy.retries,
            created_at: now,
            updated_at: now,
            reason: None,
            runs: Vec::new(),
            candidate: None,
            version: None,
            rollout: None,
            awaiting_approval: false,
            release_note: None,
        };
        self.store.put_job(job.id, &to_json(&job)?)?;
        self.store.flush().await?;
        tracing::info!(job = job.id, model = %job.model, parent, trigger = %job.trigger.kind, detail = %job.trigger.detail, "retraining job queued");
        Ok(job)
    }

    /// The scheduler's round: makes the jobs schedules call for, then starts queued jobs
    /// (oldest first) while fewer than `max_concurrent_trainings` run. Returns the jobs
    /// started; the caller runs each with [`Retrain::execute`].
    pub async fn tick(&self, now: u64) -> HubResult<Vec<u64>> {
        let _one = self.lock.lock().await;
        let jobs = self.jobs()?;
        let policies = self.policies()?;
        let judged = self.judge(&policies, now)?;
        for p in policies {
            let fired = judged
                .iter()
                .find(|(m, _)| *m == p.model)
                .map(|(_, t)| t.clone());
            if let Some(trigger) = due(&p, &jobs, fired, now)
                && let Err(error) = self.create_job(&p, trigger, now).await
            {
                tracing::warn!(%error, model = %p.model, "a retraining job could not be made");
            }
        }
        let jobs = self.jobs()?;
        let running = jobs.iter().filter(|j| j.state == JobState::Running).count();
        let free =
            (self.config.load().config.max_concurrent_trainings as usize).saturating_sub(running);
        let mut started = Vec::new();
        for mut job in jobs
            .into_iter()
            .filter(|j| j.state == JobState::Queued)
            .take(free)
        {
            let run_id = self.store.next_run_id()?;
            job.attempts += 1;
            job.state = JobState::Running;
            job.updated_at = now;
            job.runs.push(run_id);
            let run = Run {
                id: run_id,
                job: job.id,
                model: job.model.clone(),
                parent: job.parent,
                attempt: job.attempts,
                started_at: now,
                duration_ms: 0,
                dataset: None,
                holdout: None,
                trainer: TrainerRef {
                    command: Vec::new(),
                    program_sha256: None,
                },
                params: Value::Null,
                seed: 0,
                failure: None,
                metrics: None,
                log: String::new(),
                artifact: None,
                gate: None,
                dataset_schema: None,
                version: None,
            };
            self.store.put_run(run_id, &to_json(&run)?)?;
            self.store.put_job(job.id, &to_json(&job)?)?;
            started.push(job.id);
        }
        if !started.is_empty() {
            self.store.flush().await?;
        }
        Ok(started)
    }

    /// The drift and quality triggers that fire now, per model (at most one each: drift
    /// first). Streaks are updated on every judgement, whether or not a job could start.
    fn judge(&self, policies: &[Policy], now: u64) -> HubResult<Vec<(String, Trigger)>> {
        use crate::telemetry::{ALL, HOUR};
        let mut guard = self
            .streaks
            .lock()
            .map_err(|_| HubError::Internal("retrain streaks poisoned".into()))?;
        let (streaks, last) = &mut *guard;
        if *last != 0 && now < last.saturating_add(JUDGE_EVERY_SECS) {
            return Ok(Vec::new());
        }
        *last = now;
        let latest = if policies.iter().any(|p| p.policy.drift.is_some()) {
            self.telemetry.store().all_latest()?
        } else {
            Vec::new()
        };
        let mut fired = Vec::new();
        for p in policies {
            if let Some(d) = &p.policy.drift {
                let tally = streaks.tally(&p.model, d, &latest, now);
                if let Some(t) = trigger::drift_fires(d, &tally) {
                    fired.push((p.model.clone(), t));
                    continue;
                }
            }
            let Some(q) = &p.policy.quality else {
                continue;
            };
            let Some(version) = self
                .registry
                .get(&p.model)
                .ok()
                .and_then(|m| m.versions.last().map(|v| v.version))
            else {
                continue;
            };
            let hour = now / HOUR * HOUR;
            let start = hour.saturating_sub((q.hours - 1) * HOUR);
            let base_start = start.saturating_sub(q.baseline_hours * HOUR);
            let store = self.telemetry.store();
            let current = store.quality(&p.model, version, ALL, start, hour + HOUR)?;
            let baseline = store.quality(&p.model, version, ALL, base_start, start)?;
            if let Some(t) = trigger::quality_fires(q, version, baseline.as_ref(), current.as_ref())
            {
                fired.push((p.model.clone(), t));
            }
        }
        Ok(fired)
    }

    /// Runs the started job's current attempt to its end: prepares the job directory, runs
    /// the trainer, keeps the model it wrote, and records the outcome on the run and the job.
    /// A failed run is an outcome, not an error: the error is for the hub's own storage.
    pub async fn execute(&self, job_id: u64) -> HubResult<Job> {
        let job = self.job(job_id)?;
        let run_id = match (job.state, job.runs.last()) {
            (JobState::Running, Some(&id)) => id,
            _ => {
                return Err(HubError::Conflict(format!(
                    "job {job_id} is {:?}, not running",
                    job.state
                )));
            }
        };
        let mut run = self.run(run_id)?;
        let dir = self.runs_dir().join(format!("run-{run_id}"));
        let outcome = self.attempt(&job, &mut run, &dir).await;
        if let Err(error) = tokio::fs::remove_dir_all(&dir).await
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(%error, dir = %dir.display(), "a run's directory could not be removed");
        }
        self.finish(job, run, outcome).await
    }

    /// One attempt; the run is filled in as it goes (what went in, then what came out).
    /// Whether the candidate beat the champion.
    async fn attempt(&self, job: &Job, run: &mut Run, dir: &Path) -> Result<bool, RunFailure> {
        let prep = |e: HubError| RunFailure::Preparation {
            message: e.to_string(),
        };
        let policy =
            self.policy(&job.model)
                .map_err(prep)?
                .ok_or_else(|| RunFailure::Preparation {
                    message: "the model's retraining policy was removed".into(),
                })?;
        let trainer = self.trainer_command();
        let work = dir.join("job");
        let (train, holdout) = self.prepare(job, &policy, dir, &work).await.map_err(prep)?;
        let rows = train.rows + holdout.rows;
        run.dataset = Some(dataset_ref(&train));
        run.holdout = Some(dataset_ref(&holdout));
        run.dataset_schema = serde_json::to_value(&train.schema).ok();
        run.params = params_json(&policy);
        run.seed = policy.policy.seed;
        run.trainer = TrainerRef {
            command: trainer.command.clone(),
            program_sha256: program_digest(&trainer.command).await,
        };
        if rows < policy.policy.min_rows {
            return Err(RunFailure::Preparation {
                message: format!(
                    "{rows} captured rows, the policy needs {}: switch sample capture on (`edgefleet capture {}`) or lower min_rows",
                    policy.policy.min_rows, job.model
                ),
            });
        }
        self.store
            .put_run(run.id, &to_json(&*run).map_err(prep)?)
            .map_err(prep)?;
        self.keep_dataset(&train).await;
        tracing::info!(job = job.id, run = run.id, model = %job.model, rows = train.rows, held_out = holdout.rows, "training run started");
        let report = runner::run(&trainer, &work).await;
        run.duration_ms = report.duration_ms;
        run.log = report.log;
        run.metrics = report.metrics;
        if let Err(failure) = report.outcome {
            return Err(RunFailure::Trainer {
                message: failure.to_string(),
                failure,
            });
        }
        let model = report.model.unwrap_or_default();
        let digest = Digest::of(&model);
        let size = model.len() as u64;
        let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>(model)]);
        self.registry
            .receive_blob(&digest.to_hex(), chunks)
            .await
            .map_err(|e| RunFailure::Trainer {
                failure: Failure::BadOutput(e.to_string()),
                message: format!("its model could not be kept: {e}"),
            })?;
        run.artifact = Some(Artifact {
            sha256: digest,
            size,
        });
        let verdict = self
            .gate(job, digest, size, &holdout, policy.policy.margin)
            .await
            .map_err(|message| RunFailure::Candidate { message })?;
        let wins = verdict.wins;
        tracing::info!(job = job.id, run = run.id, model = %job.model, wins, detail = %verdict.detail(), "champion against challenger");
        run.gate = Some(verdict);
        if wins {
            let version = self
                .publish(job, run, &train, &holdout)
                .await
                .map_err(|message| RunFailure::Signing { message })?;
            run.version = Some(version);
            // Recorded at once: a hub that stops from here on finds the version published and
            // waiting for approval, not a run to retry (which would publish another).
            let mut published = job.clone();
            published.version = Some(version);
            published.candidate = Some(digest);
            published.awaiting_approval = true;
            published.release_note = Some(release::approval_note(&job.model, version));
            let unrecorded = |e: HubError| RunFailure::Signing {
                message: format!("published as v{version} but not recorded: {e}"),
            };
            self.store
                .put_run(run.id, &to_json(&*run).map_err(unrecorded)?)
                .map_err(unrecorded)?;
            self.store
                .put_job(job.id, &to_json(&published).map_err(unrecorded)?)
                .map_err(unrecorded)?;
            self.store.flush().await.map_err(unrecorded)?;
        }
        Ok(wins)
    }

    /// Scores the candidate (blob `digest`) against the job's parent on the held-out rows,
    /// on the blocking pool (two model loads and inference over every row).
    async fn gate(
        &self,
        job: &Job,
        digest: Digest,
        size: u64,
        holdout: &Dataset,
        margin: f64,
    ) -> Result<gate::GateVerdict, String> {
        let (_, parent) = self
            .registry
            .find(&job.model, &job.parent.to_string())
            .map_err(|e| e.to_string())?;
        let parent_path = self.registry.artifact_path(&parent.artifact.sha256);
        let mut candidate = parent.clone();
        candidate.artifact.sha256 = digest;
        candidate.artifact.size = size;
        let candidate_path = self.registry.artifact_path(&digest);
        let csv = holdout.csv.clone();
        tokio::task::spawn_blocking(move || {
            gate::judge(
                &parent,
                &parent_path,
                &candidate,
                &candidate_path,
                &csv,
                margin,
            )
        })
        .await
        .map_err(|e| format!("the gate stopped: {e}"))?
    }

    /// Writes the job directory (`work`): the training rows, their schema, params.json and
    /// the parent; the held-out rows go beside it in `dir`, out of the trainer's reach.
    async fn prepare(
        &self,
        job: &Job,
        policy: &Policy,
        dir: &Path,
        work: &Path,
    ) -> HubResult<(Dataset, Dataset)> {
        let (_, manifest) = self.registry.find(&job.model, &job.parent.to_string())?;
        let telemetry = self.telemetry.clone();
        let (model, share) = (job.model.clone(), policy.policy.holdout);
        let (train, holdout) = tokio::task::spawn_blocking(move || {
            telemetry.export_split(&model, &SamplesQuery::default(), share)
        })
        .await
        .map_err(|e| HubError::Internal(e.to_string()))??;
        let schema =
            serde_json::to_value(&train.schema).map_err(|e| HubError::Internal(e.to_string()))?;
        let artifact = self.registry.artifact_path(&manifest.artifact.sha256);
        write_job_dir(
            work,
            &train.csv,
            &schema,
            &params_json(policy),
            &manifest,
            &artifact,
        )
        .await?;
        tokio::fs::write(dir.join("holdout.csv"), &holdout.csv).await?;
        Ok((train, holdout))
    }

    /// The trainer as configured now.
    fn trainer_command(&self) -> TrainerCommand {
        let c = &self.config.load().config;
        let command = if c.trainer_command.is_empty() {
            vec![reference_trainer().to_string_lossy().into_owned()]
        } else {
            c.trainer_command.clone()
        };
        TrainerCommand {
            command,
            timeout: Duration::from_secs(c.trainer_timeout_secs),
            max_dir_bytes: c.trainer_max_dir_bytes,
            max_model_bytes: c.max_artifact_bytes,
            max_log_bytes: MAX_LOG_BYTES,
        }
    }

    async fn finish(
        &self,
        mut job: Job,
        run: Run,
        outcome: Result<bool, RunFailure>,
    ) -> HubResult<Job> {
        let mut run = run;
        let now = crate::now();
        match &outcome {
            Ok(true) => {
                job.candidate = run.artifact.as_ref().map(|a| a.sha256);
                job.version = run.version;
                if let Some(v) = run.version {
                    job.awaiting_approval = true;
                    job.release_note = Some(release::approval_note(&job.model, v));
                }
                tracing::info!(job = job.id, run = run.id, model = %job.model, version = ?run.version, ms = run.duration_ms, "training run made a candidate that beat the champion: published");
            }
            Ok(false) => {}
            Err(f) => {
                run.failure = Some(f.clone());
                tracing::warn!(job = job.id, run = run.id, model = %job.model, reason = f.message(), "training run failed");
            }
        }
        let lost = run.gate.as_ref().filter(|g| !g.wins).map(|g| g.detail());
        settle(&mut job, outcome, lost, now);
        self.store.put_run(run.id, &to_json(&run)?)?;
        self.store.put_job(job.id, &to_json(&job)?)?;
        self.store.flush().await?;
        // The version is recorded as published (and waiting for approval) before any rollout
        // is made of it; a rollout that exists is adopted, never made twice.
        if job.version.is_some() {
            self.hand_over(&mut job).await;
            self.store.put_job(job.id, &to_json(&job)?)?;
            self.store.flush().await?;
        }
        Ok(job)
    }
}

/// Whether `p`'s model gets a job now, and why: not while one of its jobs is queued or
/// running, not within the cooldown after its last job started (however often a trigger
/// fires), then a trigger that fired (`fired`: drift or quality, which say why better than the
/// clock) or the schedule.
fn due(p: &Policy, jobs: &[Job], fired: Option<Trigger>, now: u64) -> Option<Trigger> {
    let mine = || jobs.iter().filter(|j| j.model == p.model);
    if mine().any(|j| j.state.is_active()) {
        return None;
    }
    let last = mine().map(|j| j.created_at).max();
    if last.is_some_and(|t| now < t.saturating_add(p.policy.cooldown_secs)) {
        return None;
    }
    let scheduled = p.policy.every_secs.and_then(|every| {
        let due = last.unwrap_or(p.set_at).saturating_add(every);
        (now >= due).then(|| Trigger {
            kind: "schedule".into(),
            detail: format!("every {every} s"),
            values: json!({ "every_secs": every, "previous_job_at": last }),
        })
    });
    fired.or(scheduled)
}

/// The job's state after an attempt's outcome (`lost`: why the candidate lost the gate).
fn settle(job: &mut Job, outcome: Result<bool, RunFailure>, lost: Option<String>, now: u64) {
    job.updated_at = now;
    match outcome {
        Ok(true) => {
            job.state = JobState::Succeeded;
            job.reason = None;
        }
        Ok(false) => {
            job.state = JobState::Rejected;
            job.reason = lost;
        }
        Err(f) => {
            job.reason = Some(f.message().to_owned());
            job.state = if f.retryable() && job.attempts < job.max_attempts {
                JobState::Queued
            } else {
                JobState::Failed
            };
        }
    }
}

/// Writes a trainer's job directory `work` (the contract of docs/trainers.md): the training
/// rows and their schema, `params.json`, and the parent's manifest and model.
async fn write_job_dir(
    work: &Path,
    dataset_csv: &[u8],
    schema: &Value,
    params: &Value,
    parent: &edgefleet_common::ModelManifest,
    parent_model: &Path,
) -> HubResult<()> {
    let dir = work.join("parent");
    tokio::fs::create_dir_all(&dir).await?;
    tokio::fs::write(work.join("dataset.csv"), dataset_csv).await?;
    tokio::fs::write(work.join("dataset.schema.json"), pretty(schema)?).await?;
    tokio::fs::write(work.join("params.json"), pretty(params)?).await?;
    tokio::fs::write(dir.join("manifest.json"), pretty(parent)?).await?;
    tokio::fs::copy(parent_model, dir.join("model.onnx")).await?;
    Ok(())
}

fn dataset_ref(d: &Dataset) -> DatasetRef {
    DatasetRef {
        sha256: d.sha256,
        rows: d.rows,
        bytes: d.csv.len() as u64,
    }
}

/// `params.json`: the policy's params with its seed.
fn params_json(policy: &Policy) -> Value {
    let mut params = policy.policy.params.clone();
    params.insert("seed".into(), json!(policy.policy.seed));
    Value::Object(params)
}

/// The reference trainer: beside the running binary when it is there (an install puts them
/// together), else found on `PATH`.
fn reference_trainer() -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(REFERENCE_TRAINER))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(REFERENCE_TRAINER))
}

/// SHA-256 of the trainer's program file (found as the runner will find it), if readable.
async fn program_digest(command: &[String]) -> Option<Digest> {
    let program = PathBuf::from(command.first()?);
    let path = if program.components().count() > 1 {
        program
    } else {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join(&program))
            .find(|p| p.is_file())?
    };
    tokio::task::spawn_blocking(move || std::fs::read(path).ok().map(|b| Digest::of(&b)))
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests;
