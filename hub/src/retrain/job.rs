//! Jobs and runs, as kept. A job is one decision to retrain a model (with why); a run is one
//! attempt at it: exactly what went into the trainer and what came out, enough to run it
//! again and get the same bytes.

use edgefleet_common::Digest;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::runner::Failure;

/// Why a job started, with the values that started it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    /// `manual`, `schedule`.
    pub kind: String,
    /// In words, for the timeline and `edgefleet runs`.
    pub detail: String,
    /// The figures behind it (a reason an admin gave, the schedule's period, …).
    #[serde(default)]
    pub values: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for the driver (or for a retry).
    Queued,
    /// A run is under way.
    Running,
    /// A run produced a candidate model that beat the champion on the held-out rows; it was
    /// signed and published as `version` (then rolled out, or left for approval, per policy).
    Succeeded,
    /// A run produced a candidate, but it did not beat the champion by the policy's margin:
    /// the champion stays (see `reason`).
    Rejected,
    /// Every attempt failed, or the job could not run at all (see `reason`).
    Failed,
}

impl JobState {
    pub fn is_active(self) -> bool {
        matches!(self, Self::Queued | Self::Running)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub model: String,
    /// The version the job retrains (the newest published when it was made).
    pub parent: u64,
    pub trigger: Trigger,
    pub state: JobState,
    /// Runs started so far.
    pub attempts: u32,
    /// Runs allowed in all (1 + the policy's retries when the job was made).
    pub max_attempts: u32,
    pub created_at: u64,
    pub updated_at: u64,
    /// Why the job failed (its last run's failure, or what stopped it from running).
    #[serde(default)]
    pub reason: Option<String>,
    /// Its runs' ids, in order.
    #[serde(default)]
    pub runs: Vec<u64>,
    /// The candidate model its successful run made.
    #[serde(default)]
    pub candidate: Option<Digest>,
    /// The version the candidate was published as.
    #[serde(default)]
    pub version: Option<u64>,
    /// The staged rollout the version was handed to.
    #[serde(default)]
    pub rollout: Option<u64>,
    /// Published, and waiting for an admin's `edgefleet approve-model`.
    #[serde(default)]
    pub awaiting_approval: bool,
    /// What became of the published version, in words (who approved it, or why no rollout
    /// could be made).
    #[serde(default)]
    pub release_note: Option<String>,
}

/// A dataset as a run used it: exactly these bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRef {
    pub sha256: Digest,
    pub rows: u64,
    pub bytes: u64,
}

/// The trainer as a run used it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerRef {
    pub command: Vec<String>,
    /// The program's file, hashed: which build of the trainer ran.
    pub program_sha256: Option<Digest>,
}

/// One attempt at a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: u64,
    pub job: u64,
    pub model: String,
    pub parent: u64,
    pub attempt: u32,
    pub started_at: u64,
    /// Zero while running.
    pub duration_ms: u64,
    /// What the trainer trained on (`dataset.csv`).
    pub dataset: Option<DatasetRef>,
    /// What it never saw: the newest rows, kept to score the candidate.
    pub holdout: Option<DatasetRef>,
    pub trainer: TrainerRef,
    /// `params.json` exactly as written (the seed included).
    pub params: Value,
    pub seed: u64,
    /// `None` while running or on success.
    pub failure: Option<RunFailure>,
    pub metrics: Option<Value>,
    /// The end of the trainer's output.
    pub log: String,
    /// The model it wrote, kept as a blob (a losing one too, for inspection).
    pub artifact: Option<Artifact>,
    /// The candidate against the champion on the held-out rows.
    #[serde(default)]
    pub gate: Option<super::gate::GateVerdict>,
    /// The training rows' schema (`dataset.schema.json`), kept to run the run again.
    #[serde(default)]
    pub dataset_schema: Option<Value>,
    /// The version its candidate was signed and published as.
    #[serde(default)]
    pub version: Option<u64>,
}

/// The model a run wrote: its digest and size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub sha256: Digest,
    pub size: u64,
}

/// Why a run made no model: the trainer's failure, or what stopped the hub from running it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunFailure {
    /// The trainer failed (see [`Failure`]).
    Trainer { failure: Failure, message: String },
    /// The job could not be prepared: too few rows, no parent, a full disk.
    Preparation { message: String },
    /// The hub stopped while the run was under way.
    Interrupted { message: String },
    /// The trainer's model could not be judged: it does not load with the champion's
    /// tensors, or the held-out rows could not be scored.
    Candidate { message: String },
    /// The candidate won, but could not be signed or published: the hub's delegation does
    /// not cover the model, or its manifest could not be made.
    Signing { message: String },
}

impl RunFailure {
    pub fn message(&self) -> &str {
        match self {
            Self::Trainer { message, .. }
            | Self::Preparation { message }
            | Self::Interrupted { message }
            | Self::Candidate { message }
            | Self::Signing { message } => message,
        }
    }

    /// A failure another attempt could get past: not one of the data, and not a model a
    /// deterministic trainer would make again.
    pub fn retryable(&self) -> bool {
        !matches!(
            self,
            Self::Preparation { .. } | Self::Candidate { .. } | Self::Signing { .. }
        )
    }
}
