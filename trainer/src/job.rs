//! The trainer contract: what a job directory holds when the hub starts a trainer, and what the
//! trainer must leave in it (docs/trainers.md).

use std::path::{Path, PathBuf};

use edgefleet_common::{DataType, TensorSpec};
use serde::{Deserialize, Serialize};

use crate::error::{TrainError, TrainResult, invalid};

/// The training rows: CSV as the hub's samples export writes it, plus any base dataset.
pub const DATASET: &str = "dataset.csv";
/// The dataset's Frictionless Table Schema (column types and roles).
pub const SCHEMA: &str = "dataset.schema.json";
/// The run's parameters (the policy's, with the seed the hub chose).
pub const PARAMS: &str = "params.json";
/// The model being replaced: its manifest (JSON) and artifact.
pub const PARENT_MANIFEST: &str = "parent/manifest.json";
pub const PARENT_MODEL: &str = "parent/model.onnx";
/// What the trainer writes.
pub const MODEL: &str = "model.onnx";
pub const METRICS: &str = "metrics.json";

/// Largest dataset read (bytes).
pub const MAX_DATASET_BYTES: u64 = 4 << 30;
/// Largest schema, parameters or manifest file read (bytes).
pub const MAX_JSON_BYTES: u64 = 16 << 20;

/// A job directory.
#[derive(Debug, Clone)]
pub struct Job {
    pub dir: PathBuf,
}

impl Job {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Reads `name`, refusing a file over `max` bytes.
    pub fn read(&self, name: &str, max: u64) -> TrainResult<Vec<u8>> {
        read_bounded(&self.path(name), max)
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> TrainResult<()> {
        let path = self.path(name);
        std::fs::write(&path, bytes).map_err(|source| TrainError::Io { path, source })
    }
}

pub(crate) fn read_bounded(path: &Path, max: u64) -> TrainResult<Vec<u8>> {
    let io = |source| TrainError::Io {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > max {
        return Err(TrainError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(format!("{len} bytes, over the {max}-byte bound")),
        });
    }
    std::fs::read(path).map_err(io)
}

/// Which model the trainer fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Ridge regression on standardised features (missing values imputed with the mean).
    Ridge,
    /// Gradient-boosted trees (forust-ml; missing values follow the learned side): squared
    /// error for a regression, log-loss for a binary classifier.
    Gbt,
    /// Logistic regression (binary classifiers) on standardised features (missing values
    /// imputed with the mean), `alpha` its L2 penalty.
    Logistic,
}

/// `params.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(default = "default_model")]
    pub model: ModelKind,
    /// The target column; default: the dataset's first `truth` column.
    #[serde(default)]
    pub target: Option<String>,
    /// Seeds every random choice: the same dataset, parameters and seed give the same bytes.
    #[serde(default)]
    pub seed: u64,
    /// The share of the newest rows kept out of fitting to report validation metrics, [0, 0.9].
    #[serde(default = "default_validation")]
    pub validation: f64,
    /// Ridge: the L2 penalty on standardised coefficients against the mean squared error, ≥ 0
    /// (1.0 shrinks a coefficient worth one standard deviation of the target by half).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Trees: how many, the learning rate, the depth.
    #[serde(default = "default_iterations")]
    pub iterations: usize,
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f32,
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
}

fn default_model() -> ModelKind {
    ModelKind::Ridge
}
fn default_validation() -> f64 {
    0.2
}
fn default_alpha() -> f64 {
    0.001
}
fn default_iterations() -> usize {
    100
}
fn default_learning_rate() -> f32 {
    0.1
}
fn default_max_depth() -> usize {
    5
}

impl Default for Params {
    fn default() -> Self {
        Self {
            model: default_model(),
            target: None,
            seed: 0,
            validation: default_validation(),
            alpha: default_alpha(),
            iterations: default_iterations(),
            learning_rate: default_learning_rate(),
            max_depth: default_max_depth(),
        }
    }
}

impl Params {
    pub fn parse(bytes: &[u8]) -> TrainResult<Self> {
        let p: Params =
            serde_json::from_slice(bytes).map_err(|e| TrainError::Params(e.to_string()))?;
        p.validate()?;
        Ok(p)
    }

    /// Every parameter out of its range, at once.
    pub fn validate(&self) -> TrainResult<()> {
        let mut bad = Vec::new();
        if !(0.0..=0.9).contains(&self.validation) {
            bad.push(format!(
                "validation {} must be in [0, 0.9]",
                self.validation
            ));
        }
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            bad.push(format!("alpha {} must be a number ≥ 0", self.alpha));
        }
        if !(1..=10_000).contains(&self.iterations) {
            bad.push(format!("iterations {} must be 1..=10000", self.iterations));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            bad.push(format!(
                "learning_rate {} must be in (0, 1]",
                self.learning_rate
            ));
        }
        if !(1..=16).contains(&self.max_depth) {
            bad.push(format!("max_depth {} must be 1..=16", self.max_depth));
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(TrainError::Params(bad.join("; ")))
        }
    }
}

/// What the trainer needs of the parent's manifest: its tensors (the new model keeps them).
#[derive(Debug, Clone, Deserialize)]
pub struct ParentManifest {
    pub name: String,
    pub version: u64,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// The tensors a trained model must have: one FP32 input `[batch, features]` and one FP32
/// output `[batch, 1]` or `[batch]`, named as the parent's.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    pub input: String,
    pub features: usize,
    /// The input's feature names, in column order (empty when the parent names none).
    pub feature_names: Vec<String>,
    pub output: String,
    /// The output is `[batch]` rather than `[batch, 1]`.
    pub flat_output: bool,
    /// A binary classifier: `output` holds each row's label, 0 or 1 (INT64 `[batch]`).
    pub classifier: Option<Classifier>,
}

/// What a binary classifier serves besides its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Classifier {
    /// An FP32 `[batch, 2]` output of each row's probabilities of label 0 and label 1.
    pub probabilities: Option<String>,
}

impl ParentManifest {
    pub fn parse(bytes: &[u8]) -> TrainResult<Self> {
        serde_json::from_slice(bytes).map_err(|e| invalid(PARENT_MANIFEST, e.to_string()))
    }

    /// The signature the reference trainer can fit, or why the parent's is not one.
    pub fn signature(&self) -> TrainResult<Signature> {
        let [input] = &self.inputs[..] else {
            return Err(invalid(
                PARENT_MANIFEST,
                format!(
                    "the reference trainer fits models with one input; {} has {}",
                    self.name,
                    self.inputs.len()
                ),
            ));
        };
        let features = match (input.datatype, &input.shape[..]) {
            (DataType::Fp32, [b, f]) if *b < 0 && *f > 0 => *f as usize,
            _ => {
                return Err(invalid(
                    PARENT_MANIFEST,
                    format!(
                        "input {:?} is {:?} {:?}: the reference trainer needs FP32 [-1, features]",
                        input.name, input.datatype, input.shape
                    ),
                ));
            }
        };
        let Some(output) = self.outputs.first() else {
            return Err(invalid(PARENT_MANIFEST, "the parent has no output"));
        };
        let (flat_output, classifier) = match (output.datatype, &output.shape[..]) {
            (DataType::Fp32, [b]) if *b < 0 => (true, None),
            (DataType::Fp32, [b, 1]) if *b < 0 => (false, None),
            (DataType::Int64, [b]) if *b < 0 => (true, Some(self.probabilities()?)),
            _ => {
                return Err(invalid(
                    PARENT_MANIFEST,
                    format!(
                        "output {:?} is {:?} {:?}: the reference trainer fits a regression (FP32 [-1, 1] or [-1]) or a binary classifier (INT64 labels [-1], then optionally FP32 probabilities [-1, 2])",
                        output.name, output.datatype, output.shape
                    ),
                ));
            }
        };
        if !input.feature_names.is_empty() && input.feature_names.len() != features {
            return Err(invalid(
                PARENT_MANIFEST,
                format!(
                    "input {:?} names {} features for {features} columns",
                    input.name,
                    input.feature_names.len()
                ),
            ));
        }
        Ok(Signature {
            input: input.name.clone(),
            features,
            feature_names: input.feature_names.clone(),
            output: output.name.clone(),
            flat_output,
            classifier,
        })
    }

    /// A binary classifier's outputs after its labels: none, or its probabilities.
    fn probabilities(&self) -> TrainResult<Classifier> {
        match &self.outputs[1..] {
            [] => Ok(Classifier {
                probabilities: None,
            }),
            [p] if p.datatype == DataType::Fp32 && matches!(p.shape[..], [b, 2] if b < 0) => {
                Ok(Classifier {
                    probabilities: Some(p.name.clone()),
                })
            }
            other => Err(invalid(
                PARENT_MANIFEST,
                format!(
                    "after its labels a binary classifier may have one output, FP32 probabilities [-1, 2]; {} has {}",
                    self.name,
                    other
                        .iter()
                        .map(|o| format!("{:?} {:?} {:?}", o.name, o.datatype, o.shape))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
}
