//! The reference trainer: the hub's trainer contract (docs/trainers.md) for tabular
//! regression, so the closed loop needs no Python.
//!
//! ```text
//! job dir: dataset.csv + dataset.schema.json ─► Dataset (parent's feature order, target)
//!          params.json ─► Params            ─► fit: ridge (closed form) | gbt (forust-ml)
//!          parent/manifest.json ─► Signature ─► ONNX (tract's pb types, prost) ─► model.onnx
//!                                             holdout of the newest rows ─► metrics.json
//! ```
//!
//! Same dataset, parameters and seed: the same `model.onnx` bytes (no clock, no thread
//! scheduling, no hash order in the output).

#![forbid(unsafe_code)]

pub mod dataset;
pub mod error;
pub mod gbt;
pub mod job;
pub mod onnx;
pub mod ridge;

use serde::Serialize;

pub use dataset::Dataset;
pub use error::{TrainError, TrainResult};
pub use job::{Job, ModelKind, Params, ParentManifest, Signature};

/// A fitted model, either kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Fitted {
    Ridge(ridge::Linear),
    Gbt(gbt::Ensemble),
}

impl Fitted {
    pub fn predict_row(&self, row: &[f64]) -> f64 {
        match self {
            Fitted::Ridge(m) => m.predict_row(row),
            Fitted::Gbt(e) => e.predict_row(row),
        }
    }

    pub fn to_onnx(&self, sig: &Signature) -> Vec<u8> {
        match self {
            Fitted::Ridge(m) => onnx::linear(sig, m),
            Fitted::Gbt(e) => onnx::trees(sig, e),
        }
    }
}

/// Error figures of a model on some rows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scores {
    pub rows: usize,
    pub mae: f64,
    pub rmse: f64,
}

pub fn score(m: &Fitted, d: &Dataset) -> Scores {
    let (mut abs, mut sq) = (0.0, 0.0);
    for i in 0..d.rows() {
        let e = m.predict_row(d.row(i)) - d.y[i];
        abs += e.abs();
        sq += e * e;
    }
    let n = d.rows().max(1) as f64;
    Scores {
        rows: d.rows(),
        mae: abs / n,
        rmse: (sq / n).sqrt(),
    }
}

/// `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    pub trainer: String,
    pub model: ModelKind,
    pub seed: u64,
    pub target: String,
    pub features: Vec<String>,
    /// Rows skipped for a missing or non-numeric target.
    pub skipped: u64,
    pub train: Scores,
    /// The newest `validation` share of the rows, kept out of fitting (none when 0).
    pub validation: Option<Scores>,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Trained {
    pub fitted: Fitted,
    pub onnx: Vec<u8>,
    pub metrics: Metrics,
    pub signature: Signature,
}

/// Fits `params`' model on `dataset` for a model of signature `sig`.
pub fn train(dataset: &Dataset, params: &Params, sig: &Signature) -> TrainResult<Trained> {
    params.validate()?;
    let n = dataset.rows();
    let held = ((n as f64) * params.validation).floor() as usize;
    if n - held < 2 {
        return Err(TrainError::Fit(format!(
            "{n} rows leave {} to fit after the validation share: too few",
            n - held
        )));
    }
    let fit_rows = dataset.slice(0..n - held);
    let fitted = match params.model {
        ModelKind::Ridge => Fitted::Ridge(ridge::fit(&fit_rows, params.alpha)?),
        ModelKind::Gbt => Fitted::Gbt(gbt::fit(&fit_rows, params)?),
    };
    let validation = (held > 0).then(|| score(&fitted, &dataset.slice(n - held..n)));
    let metrics = Metrics {
        trainer: format!("edgefleet-train {}", env!("CARGO_PKG_VERSION")),
        model: params.model,
        seed: params.seed,
        target: dataset.target.clone(),
        features: dataset.features.clone(),
        skipped: dataset.skipped,
        train: score(&fitted, &fit_rows),
        validation,
    };
    Ok(Trained {
        onnx: fitted.to_onnx(sig),
        fitted,
        metrics,
        signature: sig.clone(),
    })
}

/// Runs the job in `job`'s directory: reads its inputs, trains, writes `model.onnx` and
/// `metrics.json` (the model last, so a model file is always a whole one).
pub fn run(job: &Job) -> TrainResult<Trained> {
    let params = Params::parse(&job.read(job::PARAMS, job::MAX_JSON_BYTES)?)?;
    let parent = ParentManifest::parse(&job.read(job::PARENT_MANIFEST, job::MAX_JSON_BYTES)?)?;
    let sig = parent.signature()?;
    let dataset = Dataset::read(
        &job.read(job::DATASET, job::MAX_DATASET_BYTES)?,
        &job.read(job::SCHEMA, job::MAX_JSON_BYTES)?,
        &sig,
        params.target.as_deref(),
    )?;
    let trained = train(&dataset, &params, &sig)?;
    let metrics = serde_json::to_vec_pretty(&trained.metrics)
        .map_err(|e| TrainError::Fit(format!("metrics: {e}")))?;
    job.write(job::METRICS, &metrics)?;
    let tmp = format!("{}.partial", job::MODEL);
    job.write(&tmp, &trained.onnx)?;
    std::fs::rename(job.path(&tmp), job.path(job::MODEL)).map_err(|source| TrainError::Io {
        path: job.path(job::MODEL),
        source,
    })?;
    Ok(trained)
}
