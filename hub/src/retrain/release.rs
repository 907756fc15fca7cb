//! What follows a won gate: the candidate signed with the hub's delegated key and published
//! as the model's next version, then handed to a staged rollout or left for an admin's
//! approval (per policy); and, for admins afterwards, a version's lineage back to the first
//! model and a recorded run run again to show it makes the same bytes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use edgefleet_common::{Digest, Lineage, Permission, Signed, name};
use serde::Serialize;
use serde_json::{Map, Value};

use super::candidate::{self, Draft};
use super::job::{Artifact, Job, Run, TrainerRef};
use super::policy::{Release, rollout_spec};
use super::{Retrain, program_digest, runner, to_json, write_job_dir};
use crate::error::{HubError, HubResult};
use crate::telemetry::samples::Dataset;

/// Reproductions started since the hub started: each gets its own directory.
static ATTEMPTS: AtomicU64 = AtomicU64::new(0);

/// One version in a lineage: what its manifest says and, for a version the hub trained, the
/// job (why it started), the run (what went in, what came out, the gate) and its rollouts.
#[derive(Debug, Serialize)]
pub struct LineageStep {
    pub version: u64,
    pub created_at: u64,
    pub signer: String,
    pub description: String,
    pub artifact_sha256: Digest,
    pub lineage: Lineage,
    pub job: Option<Job>,
    /// The run that made it (its log left out: `GET /api/v1/retrain/runs/{id}` has it).
    pub run: Option<Run>,
    pub rollouts: Vec<RolloutSummary>,
}

#[derive(Debug, Serialize)]
pub struct RolloutSummary {
    pub id: u64,
    pub state: &'static str,
    pub waves: usize,
    pub created_at: u64,
    pub reason: Option<String>,
}

/// A recorded run run again.
#[derive(Debug, Serialize)]
pub struct Reproduction {
    pub run: u64,
    /// What the run recorded.
    pub recorded: Artifact,
    /// What the trainer made this time (none: it failed, see `failure`).
    pub artifact: Option<Artifact>,
    /// The same bytes.
    pub identical: bool,
    /// The trainer as configured now, and whether it is the same command and program (the
    /// first word's file, hashed) the run used.
    pub trainer: TrainerRef,
    pub same_trainer: bool,
    pub failure: Option<String>,
    pub duration_ms: u64,
    pub log: String,
}

impl Retrain {
    /// Keeps the training rows as a blob under their digest, so the run can be run again
    /// after the samples age out. Rows over the artifact limit are not kept (said in the log).
    pub(super) async fn keep_dataset(&self, train: &Dataset) {
        let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>(train.csv.clone())]);
        if let Err(error) = self
            .registry
            .receive_blob(&train.sha256.to_hex(), chunks)
            .await
        {
            tracing::warn!(%error, dataset = %train.sha256, "a run's training rows could not be kept: it cannot be run again");
        }
    }

    /// Signs the run's candidate as the model's next version and publishes it. The version
    /// number is the newest's + 1 (an admin may have published since the job started).
    pub(super) async fn publish(
        &self,
        job: &Job,
        run: &Run,
        train: &Dataset,
        holdout: &Dataset,
    ) -> Result<u64, String> {
        let config = self.config.load_full();
        let delegation = config
            .delegation
            .decode_unverified()
            .map_err(|e| e.to_string())?;
        if !delegation.covers(Permission::Manifests, &job.model) {
            return Err(format!(
                "the hub's delegation (models {:?}, permissions {:?}) does not let it sign versions of {}: sign a new one with `edgefleet delegate --models {} --permission manifests --permission assignments` and reload the hub",
                delegation.patterns, delegation.permissions, job.model, job.model
            ));
        }
        let artifact = run
            .artifact
            .as_ref()
            .ok_or("the run kept no model")?
            .clone();
        let (_, parent) = self
            .registry
            .find(&job.model, &job.parent.to_string())
            .map_err(|e| e.to_string())?;
        let reference = self
            .registry
            .facts(&job.model, job.parent)
            .map_err(|e| e.to_string())?
            .and_then(|f| f.reference.clone());
        let newest = self
            .registry
            .get(&job.model)
            .map_err(|e| e.to_string())?
            .versions
            .last()
            .map_or(0, |v| v.version);
        let version = newest + 1;
        let lineage = lineage_of(job, run);
        let description = format!(
            "retrained from v{} by job {} (run {}): {}",
            job.parent, job.id, run.id, job.trigger.detail
        );
        let path = self.registry.artifact_path(&artifact.sha256);
        let (train, holdout) = (train.csv.clone(), holdout.csv.clone());
        let now = crate::now();
        let manifest = tokio::task::spawn_blocking(move || {
            candidate::manifest(Draft {
                parent: &parent,
                parent_reference: reference.as_ref(),
                candidate: &path,
                candidate_sha256: artifact.sha256,
                candidate_size: artifact.size,
                version,
                created_at: now,
                lineage,
                description,
                train_csv: &train,
                holdout_csv: &holdout,
            })
        })
        .await
        .map_err(|e| format!("making the manifest stopped: {e}"))??;
        let bytes = Signed::sign(
            &manifest,
            &config.signing_key,
            Some(config.delegation.clone()),
        )
        .and_then(|s| s.to_bytes())
        .map_err(|e| e.to_string())?;
        let published = self
            .registry
            .publish(&bytes)
            .await
            .map_err(|e| format!("the registry refused the new version: {e}"))?;
        tracing::info!(job = job.id, run = run.id, model = %job.model, version = published.version, "retrained version signed and published");
        Ok(published.version)
    }

    /// Hands a job's published version on, per the model's policy now: to a staged rollout,
    /// or to an admin. A rollout that cannot be made (another one of the model is under way)
    /// leaves it waiting for approval, saying why.
    pub(super) async fn hand_over(&self, job: &mut Job) {
        let Some(version) = job.version else {
            return;
        };
        let policy = self.policy(&job.model).ok().flatten();
        // A version published over one the candidate was never compared with waits for an
        // admin, whatever the policy says.
        let skipped: Vec<u64> = self
            .registry
            .get(&job.model)
            .map(|m| {
                m.versions
                    .iter()
                    .map(|v| v.version)
                    .filter(|&v| v > job.parent && v < version)
                    .collect()
            })
            .unwrap_or_default();
        match policy {
            _ if !skipped.is_empty() => {
                job.awaiting_approval = true;
                job.release_note = Some(format!(
                    "v{skipped:?} was published while the job ran and the candidate was judged against v{} only; {}",
                    job.parent,
                    approval_note(&job.model, version)
                ));
            }
            Some(p) if p.policy.release == Release::Rollout => {
                match self
                    .start_rollout(&job.model, version, p.policy.rollout.as_ref())
                    .await
                {
                    Ok(id) => {
                        job.rollout = Some(id);
                        job.awaiting_approval = false;
                        job.release_note = Some(format!(
                            "handed to rollout {id} by the policy (`edgefleet rollout status {id}`)"
                        ));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, model = %job.model, version, "a retrained version's rollout could not be made");
                        job.awaiting_approval = true;
                        job.release_note = Some(format!(
                            "no rollout could be made ({e}); {}",
                            approval_note(&job.model, version)
                        ));
                    }
                }
            }
            _ => {
                job.awaiting_approval = true;
                job.release_note = Some(approval_note(&job.model, version));
            }
        }
    }

    /// A rollout of `model` `version` that exists already (made before a restart).
    pub(super) fn rollout_of(&self, model: &str, version: u64) -> HubResult<Option<u64>> {
        Ok(self
            .rollouts
            .list()?
            .into_iter()
            .find(|r| r.spec.model == model && r.spec.version == version)
            .map(|r| r.id))
    }

    async fn start_rollout(
        &self,
        model: &str,
        version: u64,
        template: Option<&Map<String, Value>>,
    ) -> HubResult<u64> {
        let spec = rollout_spec(template, model, version).map_err(HubError::Invalid)?;
        Ok(self.rollouts.create(spec).await?.id)
    }

    /// An admin approves a version a job published and left waiting: its rollout is made from
    /// `template` (a rollout spec without model and version) or the policy's.
    pub async fn approve(
        &self,
        model: &str,
        version: u64,
        template: Option<Map<String, Value>>,
    ) -> HubResult<Job> {
        name::validate(model)?;
        let _one = self.lock.lock().await;
        let mut job = self
            .jobs()?
            .into_iter()
            .find(|j| j.model == model && j.version == Some(version))
            .ok_or_else(|| {
                HubError::NotFound(format!(
                    "no retraining job published {model} v{version}; roll out a version you published yourself with `edgefleet rollout create`"
                ))
            })?;
        if !job.awaiting_approval {
            return Err(HubError::Conflict(format!(
                "{model} v{version} is not waiting for approval{}",
                job.rollout
                    .map(|r| format!(": rollout {r} has it"))
                    .unwrap_or_default()
            )));
        }
        let template = match template {
            Some(t) => Some(t),
            None => self.policy(model)?.and_then(|p| p.policy.rollout),
        };
        let id = match self.rollout_of(model, version)? {
            Some(id) => id,
            None => {
                self.start_rollout(model, version, template.as_ref())
                    .await?
            }
        };
        job.awaiting_approval = false;
        job.rollout = Some(id);
        job.updated_at = crate::now();
        job.release_note = Some(format!(
            "approved by an admin; rollout {id} (`edgefleet rollout status {id}`)"
        ));
        self.store.put_job(job.id, &to_json(&job)?)?;
        self.store.flush().await?;
        tracing::info!(
            job = job.id,
            model,
            version,
            rollout = id,
            "retrained version approved"
        );
        Ok(job)
    }

    /// `version` and its ancestors back to the first (or the first the registry still has),
    /// newest first.
    pub fn lineage(&self, model: &str, version: u64) -> HubResult<Vec<LineageStep>> {
        name::validate(model)?;
        let jobs = self.jobs()?;
        let rollouts = self.rollouts.list()?;
        let mut steps = Vec::new();
        let mut next = Some(version);
        while let Some(v) = next {
            let Some(record) = self.registry.record(model, v)? else {
                if steps.is_empty() {
                    return Err(HubError::NotFound(format!(
                        "model {model} has no version {v}"
                    )));
                }
                break;
            };
            let m = record.manifest.decode_unverified()?;
            let job = jobs
                .iter()
                .find(|j| j.model == model && j.version == Some(v))
                .cloned();
            let run = match &job {
                Some(j) => j
                    .runs
                    .last()
                    .map(|&id| self.run(id))
                    .transpose()?
                    .map(|mut r| {
                        r.log.clear();
                        r
                    }),
                None => None,
            };
            steps.push(LineageStep {
                version: v,
                created_at: m.created_at,
                signer: record.manifest.signer.to_hex(),
                description: m.description,
                artifact_sha256: m.artifact.sha256,
                rollouts: rollouts
                    .iter()
                    .filter(|r| r.spec.model == model && r.spec.version == v)
                    .map(|r| RolloutSummary {
                        id: r.id,
                        state: r.state.name(),
                        waves: r.spec.waves.len(),
                        created_at: r.created_at,
                        reason: r.reason.clone(),
                    })
                    .collect(),
                job,
                run,
                lineage: m.lineage.clone(),
            });
            // A parent at or above its child would loop: stop there.
            next = m.lineage.parent_version.filter(|&p| p < v);
        }
        Ok(steps)
    }

    /// Runs a recorded run again with the trainer as configured now, on exactly its inputs
    /// (its kept training rows, schema, params, seed, parent), and compares the model bytes.
    /// Nothing is published. At most one reproduction or training per model at a time is not
    /// enforced: it runs beside the scheduler's jobs.
    pub async fn reproduce(&self, run_id: u64) -> HubResult<Reproduction> {
        let run = self.run(run_id)?;
        let conflict = |why: &str| HubError::Conflict(format!("run {run_id} {why}"));
        let recorded = run
            .artifact
            .clone()
            .ok_or_else(|| conflict("made no model: there is nothing to reproduce"))?;
        let dataset = run
            .dataset
            .as_ref()
            .ok_or_else(|| conflict("recorded no dataset"))?;
        let schema = run
            .dataset_schema
            .as_ref()
            .ok_or_else(|| conflict("predates kept schemas and cannot be run again"))?;
        let rows = self.registry.artifact_path(&dataset.sha256);
        let csv = tokio::fs::read(&rows).await.map_err(|_| {
            conflict("has no kept training rows (they were over the artifact limit, or removed)")
        })?;
        if Digest::of(&csv) != dataset.sha256 {
            return Err(HubError::Internal(format!(
                "the kept training rows of run {run_id} do not hash to their digest"
            )));
        }
        let (_, parent) = self.registry.find(&run.model, &run.parent.to_string())?;
        let dir = self.runs_dir().join(format!(
            "reproduce-{run_id}-{}",
            ATTEMPTS.fetch_add(1, Ordering::Relaxed)
        ));
        let work = dir.join("job");
        let started = Instant::now();
        let trainer = self.trainer_command();
        let prepared = write_job_dir(
            &work,
            &csv,
            schema,
            &run.params,
            &parent,
            &self.registry.artifact_path(&parent.artifact.sha256),
        )
        .await;
        let report = match prepared {
            Ok(()) => Some(runner::run(&trainer, &work).await),
            Err(_) => None,
        };
        let _ = tokio::fs::remove_dir_all(&dir).await;
        prepared?;
        let report = report.ok_or_else(|| HubError::Internal("no report".into()))?;
        let program = program_digest(&trainer.command).await;
        let artifact = report.model.as_ref().map(|m| Artifact {
            sha256: Digest::of(m),
            size: m.len() as u64,
        });
        Ok(Reproduction {
            run: run_id,
            identical: artifact.as_ref() == Some(&recorded),
            same_trainer: program.is_some()
                && program == run.trainer.program_sha256
                && trainer.command == run.trainer.command,
            recorded,
            artifact,
            trainer: TrainerRef {
                command: trainer.command.clone(),
                program_sha256: program,
            },
            failure: report.outcome.err().map(|f| f.to_string()),
            duration_ms: started.elapsed().as_millis() as u64,
            log: report.log,
        })
    }
}

/// What a published version's manifest says of where it came from: its parent, its data, the
/// trainer, the params (as text), the trainer's numeric metrics and the gate's.
fn lineage_of(job: &Job, run: &Run) -> Lineage {
    let mut params = BTreeMap::new();
    if let Value::Object(p) = &run.params {
        for (k, v) in p {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            params.insert(k.clone(), text);
        }
    }
    params.insert("edgefleet.job".into(), job.id.to_string());
    params.insert("edgefleet.run".into(), run.id.to_string());
    params.insert("edgefleet.trigger".into(), job.trigger.kind.clone());
    if let Some(h) = &run.holdout {
        params.insert("edgefleet.holdout_sha256".into(), h.sha256.to_hex());
    }
    let mut metrics = BTreeMap::new();
    if let Some(m) = &run.metrics {
        numbers("", m, 0, &mut metrics);
    }
    if let Some(g) = &run.gate {
        metrics.insert(format!("holdout_{}", g.metric), g.candidate);
        metrics.insert(format!("champion_holdout_{}", g.metric), g.champion);
    }
    Lineage {
        parent_version: Some(job.parent),
        training_data_digest: run.dataset.as_ref().map(|d| d.sha256),
        // The program, not its arguments (a wrapper's script may be long): which build ran.
        code_revision: run.trainer.command.first().map(|program| {
            match &run.trainer.program_sha256 {
                Some(d) => format!("{program} sha256:{d}"),
                None => program.clone(),
            }
        }),
        params,
        metrics,
    }
}

/// Most metrics a manifest's lineage keeps.
const MAX_LINEAGE_METRICS: usize = 64;

/// The numbers of a trainer's `metrics.json`, nested objects as dotted keys (`validation.mae`),
/// three levels deep and [`MAX_LINEAGE_METRICS`] at most.
fn numbers(prefix: &str, v: &Value, depth: usize, out: &mut BTreeMap<String, f64>) {
    match v {
        Value::Object(m) if depth < 3 => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                numbers(&key, v, depth + 1, out);
            }
        }
        Value::Number(n) if out.len() < MAX_LINEAGE_METRICS && !prefix.is_empty() => {
            if let Some(x) = n.as_f64().filter(|x| x.is_finite()) {
                out.insert(prefix.to_owned(), x);
            }
        }
        _ => {}
    }
}

/// What a job's release note says of a version left for an admin.
pub(super) fn approval_note(model: &str, version: u64) -> String {
    format!(
        "published; waiting for an admin: `edgefleet approve-model {model} {version}` starts its rollout"
    )
}
