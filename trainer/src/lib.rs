//! The reference trainer: the hub's trainer contract (docs/trainers.md) for tabular
//! regression and binary classification, so the closed loop needs no Python.
//!
//! ```text
//! job dir: dataset.csv + dataset.schema.json ─► Dataset (parent's feature order, target)
//!          params.json ─► Params            ─► fit: ridge (closed form) | logistic (Newton)
//!                                                   | gbt (forust-ml: squared error, log-loss)
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
pub mod logistic;
pub mod onnx;
pub mod ridge;

use serde::Serialize;

pub use dataset::Dataset;
pub use error::{TrainError, TrainResult};
pub use job::{Classifier, Job, ModelKind, Params, ParentManifest, Signature};

/// A fitted model.
#[derive(Debug, Clone, PartialEq)]
pub enum Fitted {
    Ridge(ridge::Linear),
    Gbt(gbt::Ensemble),
    /// A binary classifier: the linear model's value is the log-odds of label 1.
    Logistic(ridge::Linear),
    /// A binary classifier: the ensemble's value is the log-odds of label 1.
    GbtClassifier(gbt::Ensemble),
}

impl Fitted {
    /// A regression's prediction for `row`; a classifier's probability of label 1.
    pub fn predict_row(&self, row: &[f64]) -> f64 {
        match self {
            Fitted::Ridge(m) => m.predict_row(row),
            Fitted::Gbt(e) => e.predict_row(row),
            Fitted::Logistic(_) | Fitted::GbtClassifier(_) => {
                logistic::sigmoid(self.log_odds(row).unwrap_or(0.0))
            }
        }
    }

    pub fn is_classifier(&self) -> bool {
        matches!(self, Fitted::Logistic(_) | Fitted::GbtClassifier(_))
    }

    /// A classifier's log-odds of label 1 for `row` (what the served model computes before
    /// its sigmoid); none for a regression.
    pub fn log_odds(&self, row: &[f64]) -> Option<f64> {
        match self {
            Fitted::Logistic(m) => Some(m.predict_row(row)),
            Fitted::GbtClassifier(e) => Some(e.predict_row(row)),
            Fitted::Ridge(_) | Fitted::Gbt(_) => None,
        }
    }

    /// A classifier's label for `row`: 1 when its log-odds are above 0 (as served); none for a
    /// regression.
    pub fn label_row(&self, row: &[f64]) -> Option<i64> {
        self.log_odds(row).map(label)
    }

    pub fn to_onnx(&self, sig: &Signature) -> Vec<u8> {
        match self {
            Fitted::Ridge(m) | Fitted::Logistic(m) => onnx::linear(sig, m),
            Fitted::Gbt(e) | Fitted::GbtClassifier(e) => onnx::trees(sig, e),
        }
    }
}

/// Figures of a model on some rows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Scores {
    Regression {
        rows: usize,
        mae: f64,
        rmse: f64,
    },
    /// A binary classifier: the share of rows labelled right, and the mean log-loss of its
    /// probabilities (natural log, each probability clamped to [1e-15, 1 − 1e-15]).
    Classification {
        rows: usize,
        accuracy: f64,
        log_loss: f64,
    },
}

impl Scores {
    pub fn rows(&self) -> usize {
        match self {
            Scores::Regression { rows, .. } | Scores::Classification { rows, .. } => *rows,
        }
    }

    /// A regression's mean absolute error.
    pub fn mae(&self) -> Option<f64> {
        match self {
            Scores::Regression { mae, .. } => Some(*mae),
            Scores::Classification { .. } => None,
        }
    }
}

impl std::fmt::Display for Scores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scores::Regression { rows, mae, rmse } => {
                write!(f, "MAE {mae:.4} (RMSE {rmse:.4}) on {rows} rows")
            }
            Scores::Classification {
                rows,
                accuracy,
                log_loss,
            } => write!(
                f,
                "accuracy {accuracy:.4} (log-loss {log_loss:.4}) on {rows} rows"
            ),
        }
    }
}

/// The label the served model gives for `log_odds` (its Greater-than-0 node).
fn label(log_odds: f64) -> i64 {
    i64::from(log_odds > 0.0)
}

pub fn score(m: &Fitted, d: &Dataset) -> Scores {
    let n = d.rows().max(1) as f64;
    if m.is_classifier() {
        let (mut right, mut loss) = (0usize, 0.0);
        for i in 0..d.rows() {
            // One evaluation per row: the label and the probability both come from the log-odds.
            let s = m.log_odds(d.row(i)).unwrap_or(0.0);
            let p = logistic::sigmoid(s).clamp(1e-15, 1.0 - 1e-15);
            let y = d.y[i];
            right += usize::from(label(s) == y as i64);
            loss -= if y == 1.0 { p.ln() } else { (1.0 - p).ln() };
        }
        return Scores::Classification {
            rows: d.rows(),
            accuracy: right as f64 / n,
            log_loss: loss / n,
        };
    }
    let (mut abs, mut sq) = (0.0, 0.0);
    for i in 0..d.rows() {
        let e = m.predict_row(d.row(i)) - d.y[i];
        abs += e.abs();
        sq += e * e;
    }
    Scores::Regression {
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
    let classifier = sig.classifier.is_some();
    if classifier && let Some(i) = dataset.y.iter().position(|&y| y != 0.0 && y != 1.0) {
        return Err(TrainError::Fit(format!(
            "target {:?} is {} in row {}: {:?} is a binary classifier's labels, 0 or 1",
            dataset.target,
            dataset.y[i],
            i + 1,
            sig.output
        )));
    }
    let fitted = match (params.model, classifier) {
        (ModelKind::Ridge, false) => Fitted::Ridge(ridge::fit(&fit_rows, params.alpha)?),
        (ModelKind::Gbt, false) => Fitted::Gbt(gbt::fit(&fit_rows, params, false)?),
        (ModelKind::Logistic, true) => Fitted::Logistic(logistic::fit(&fit_rows, params.alpha)?),
        (ModelKind::Gbt, true) => Fitted::GbtClassifier(gbt::fit(&fit_rows, params, true)?),
        (ModelKind::Ridge, true) => {
            return Err(TrainError::Params(format!(
                "model \"ridge\" fits a regression, and {:?} is a classifier's labels: use \"logistic\" or \"gbt\"",
                sig.output
            )));
        }
        (ModelKind::Logistic, false) => {
            return Err(TrainError::Params(format!(
                "model \"logistic\" fits a binary classifier, and {:?} is a regression's output: use \"ridge\" or \"gbt\"",
                sig.output
            )));
        }
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
