//! A model's retraining policy: what starts a job, how often, with which trainer parameters,
//! and what a job needs before it may run. Set by an admin (`PUT
//! /api/v1/models/{name}/retrain-policy`), kept per model.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::trigger::{DriftTrigger, QualityTrigger};

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
    /// How much better the candidate must be on the held-out rows: its MAE at most the
    /// champion's × (1 − margin).
    #[serde(default = "default_margin")]
    pub margin: f64,
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
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// A model's policy, as kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub model: String,
    pub policy: PolicyRequest,
    pub set_at: u64,
}
