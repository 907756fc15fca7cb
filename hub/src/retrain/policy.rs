//! A model's retraining policy: what starts a job, how often, with which trainer parameters,
//! and what a job needs before it may run. Set by an admin (`PUT
//! /api/v1/models/{name}/retrain-policy`), kept per model.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::trigger::{DriftTrigger, QualityTrigger};
use crate::rollout::RolloutSpec;

/// Largest `params` accepted, as JSON.
pub const MAX_PARAMS_BYTES: usize = 16 * 1024;
/// The shortest schedule: retraining more often than hourly is a loop, not a schedule.
pub const MIN_EVERY_SECS: u64 = 3600;

/// What an admin sends; [`Policy`] is what is kept (with when it was set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    /// Written to the job's `params.json` as they are (the hub adds `seed`): the trainer's
    /// own keys, e.g. `{"model": "gbt", "iterations": 200}` for `edgefleet-train`.
    #[serde(default)]
    pub params: Map<String, Value>,
    /// The seed every run of this policy gets: the same data, params and seed give the same
    /// model bytes.
    #[serde(default)]
    pub seed: u64,
    /// Retrain on a schedule: every this many seconds after the last job started (≥ 3600).
    #[serde(default)]
    pub every_secs: Option<u64>,
    /// Retrain when the devices' inputs drift ([`DriftTrigger`]).
    #[serde(default)]
    pub drift: Option<DriftTrigger>,
    /// Retrain when the champion's quality from ground truth drops ([`QualityTrigger`]).
    #[serde(default)]
    pub quality: Option<QualityTrigger>,
    /// No automatic job starts sooner than this after the previous one started (a manual
    /// request is not held back).
    #[serde(default = "default_cooldown")]
    pub cooldown_secs: u64,
    /// Attempts after a failed one (a crash, a timeout, the hub stopping mid-run).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Fewest captured rows a job trains on; fewer, and the job fails without running the
    /// trainer.
    #[serde(default = "default_min_rows")]
    pub min_rows: u64,
    /// The share of the newest captured rows held out from the trainer, to score the
    /// candidate against the champion.
    #[serde(default = "default_holdout")]
    pub holdout: f64,
    /// How much better the candidate must be on the held-out rows: its error (a regression's
    /// MAE, a classifier's share of wrong labels) at most the champion's × (1 − margin).
    #[serde(default = "default_margin")]
    pub margin: f64,
    /// What becomes of a version a job signs and publishes: `approval` (the default) leaves it
    /// for an admin's `edgefleet approve-model`; `rollout` hands it to a staged rollout at
    /// once.
    #[serde(default)]
    pub release: Release,
    /// The staged rollout a published version gets (on approval, or at once): a rollout spec
    /// without `model`, `version` and `supersedes`. Absent: every approved device, in the
    /// rollout defaults' waves and gates.
    #[serde(default)]
    pub rollout: Option<Map<String, Value>>,
}

/// See [`PolicyRequest::release`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Release {
    /// Signed and published, then waiting for an admin.
    #[default]
    Approval,
    /// Signed, published and handed to a staged rollout.
    Rollout,
}

fn default_cooldown() -> u64 {
    6 * 3600
}
fn default_retries() -> u32 {
    1
}
fn default_min_rows() -> u64 {
    100
}
fn default_holdout() -> f64 {
    0.2
}
fn default_margin() -> f64 {
    0.02
}

impl Default for PolicyRequest {
    fn default() -> Self {
        Self {
            params: Map::new(),
            seed: 0,
            every_secs: None,
            drift: None,
            quality: None,
            cooldown_secs: default_cooldown(),
            retries: default_retries(),
            min_rows: default_min_rows(),
            holdout: default_holdout(),
            margin: default_margin(),
            release: Release::default(),
            rollout: None,
        }
    }
}

impl PolicyRequest {
    /// Every problem at once, each naming its key and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        if serde_json::to_vec(&self.params).map_or(usize::MAX, |v| v.len()) > MAX_PARAMS_BYTES {
            errors.push(format!("params: at most {MAX_PARAMS_BYTES} bytes of JSON"));
        }
        if self.params.contains_key("seed") {
            errors.push("params.seed: set the policy's `seed` instead".to_owned());
        }
        if self.every_secs.is_some_and(|e| e < MIN_EVERY_SECS) {
            errors.push(format!("every_secs: at least {MIN_EVERY_SECS}"));
        }
        if let Some(d) = &self.drift {
            d.validate(&mut errors);
        }
        if let Some(q) = &self.quality {
            q.validate(&mut errors);
        }
        if self.cooldown_secs > 30 * 24 * 3600 {
            errors.push("cooldown_secs: at most 30 days (2592000)".to_owned());
        }
        if self.retries > 10 {
            errors.push("retries: at most 10".to_owned());
        }
        if !(2..=crate::telemetry::samples::MAX_EXPORT_ROWS).contains(&self.min_rows) {
            errors.push(format!(
                "min_rows: 2..={}",
                crate::telemetry::samples::MAX_EXPORT_ROWS
            ));
        }
        if !(0.0..0.9).contains(&self.margin) {
            errors.push("margin: a share in [0, 0.9)".to_owned());
        }
        if !(self.holdout > 0.0 && self.holdout <= 0.5) {
            errors.push("holdout: a share in (0, 0.5]".to_owned());
        }
        if let Err(e) = self.rollout_spec("model", 1) {
            errors.push(e);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

impl PolicyRequest {
    /// The rollout `model` `version` gets under this policy.
    pub fn rollout_spec(&self, model: &str, version: u64) -> Result<RolloutSpec, String> {
        rollout_spec(self.rollout.as_ref(), model, version)
    }
}

/// The rollout `model` `version` gets from `template` (a rollout spec without `model`,
/// `version` and `supersedes`; none: the defaults); every problem at once, each named
/// `rollout.<key>`.
pub fn rollout_spec(
    template: Option<&Map<String, Value>>,
    model: &str,
    version: u64,
) -> Result<RolloutSpec, String> {
    let mut spec = template.cloned().unwrap_or_default();
    let mut errors = Vec::new();
    for key in ["model", "version", "supersedes"] {
        if spec.contains_key(key) {
            errors.push(format!("rollout.{key}: set by the job, not the policy"));
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    spec.insert("model".into(), Value::from(model));
    spec.insert("version".into(), Value::from(version));
    let spec: RolloutSpec =
        serde_json::from_value(Value::Object(spec)).map_err(|e| format!("rollout: {e}"))?;
    let problems = spec.problems();
    if problems.is_empty() {
        Ok(spec)
    } else {
        Err(problems
            .iter()
            .map(|p| format!("rollout.{p}"))
            .collect::<Vec<_>>()
            .join("; "))
    }
}

/// A model's policy, as kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub model: String,
    pub policy: PolicyRequest,
    pub set_at: u64,
}
