//! The model manifest: everything a device needs to fetch, verify, check and serve one model
//! version. It is signed by the root key or a key the root delegated for the model's name.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::encoding::Document;
use crate::error::{Error, Result};
use crate::name;
use crate::tensor::{DataType, Tensor};

/// Largest artifact a manifest may describe (devices also cap by their own disk).
pub const MAX_ARTIFACT_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Bounds that keep a manifest small enough to decode anywhere.
pub const MAX_TENSORS: usize = 256;
pub const MAX_SMOKE_TESTS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Onnx,
}

/// The artifact file, bound by hash and exact size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub sha256: Digest,
    pub size: u64,
    pub format: ModelFormat,
}

/// One input or output of the model. `shape` uses -1 for a dynamic dimension (the batch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
    /// For tabular inputs: the column name of each feature along the last axis.
    #[serde(default)]
    pub feature_names: Vec<String>,
}

/// Known inputs with expected outputs: a device refuses to serve a model that does not reproduce them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmokeTest {
    pub inputs: Vec<Tensor>,
    pub expected: Vec<Tensor>,
    /// Absolute tolerance |got - expected| <= tolerance, per element.
    pub tolerance: f64,
}

/// Where the model came from. Filled by the retraining pipeline; optional for hand-made models.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    pub parent_version: Option<u64>,
    pub training_data_digest: Option<Digest>,
    pub code_revision: Option<String>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    pub name: String,
    pub version: u64,
    pub artifact: ArtifactRef,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub smoke_tests: Vec<SmokeTest>,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    pub lineage: Lineage,
    /// Training-data profile (sketch envelope bytes), used for drift detection.
    #[serde(with = "serde_bytes")]
    pub reference_profile: Option<Vec<u8>>,
    pub description: String,
}

impl Document for ModelManifest {
    const KIND: &'static str = "manifest";
    const WHAT: &'static str = "model manifest";
}

impl ModelManifest {
    /// Structural checks every receiver runs after the signature check.
    pub fn validate(&self) -> Result<()> {
        name::validate(&self.name)?;
        let bad = |m: String| Err(Error::InvalidManifest(m));
        if self.version == 0 {
            return bad("version must be at least 1".into());
        }
        if self.artifact.size == 0 || self.artifact.size > MAX_ARTIFACT_BYTES {
            return bad(format!(
                "artifact size {} is outside 1..={MAX_ARTIFACT_BYTES}",
                self.artifact.size
            ));
        }
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return bad("a model needs at least one input and one output".into());
        }
        if self.inputs.len() + self.outputs.len() > MAX_TENSORS {
            return bad(format!("more than {MAX_TENSORS} tensors"));
        }
        if self.smoke_tests.len() > MAX_SMOKE_TESTS {
            return bad(format!("more than {MAX_SMOKE_TESTS} smoke tests"));
        }
        for spec in self.inputs.iter().chain(&self.outputs) {
            if spec.name.is_empty() || spec.name.len() > 256 {
                return bad("tensor names must be 1..=256 bytes".into());
            }
            if spec.shape.iter().any(|&d| d < -1 || d == 0) {
                return bad(format!(
                    "tensor {:?}: dimensions must be positive or -1",
                    spec.name
                ));
            }
            if !spec.feature_names.is_empty()
                && spec
                    .shape
                    .last()
                    .is_some_and(|&d| d > 0 && d as usize != spec.feature_names.len())
            {
                return bad(format!(
                    "tensor {:?}: {} feature names for a last dimension of {:?}",
                    spec.name,
                    spec.feature_names.len(),
                    spec.shape.last()
                ));
            }
        }
        if let Some(bytes) = &self.reference_profile {
            crate::sketch::Profile::from_bytes(bytes)
                .map_err(|e| Error::InvalidManifest(format!("reference profile: {e}")))?;
        }
        for (i, t) in self.smoke_tests.iter().enumerate() {
            if !(t.tolerance.is_finite() && t.tolerance >= 0.0) {
                return bad(format!("smoke test {i}: tolerance must be finite and >= 0"));
            }
            for tensor in t.inputs.iter().chain(&t.expected) {
                tensor.validate()?;
            }
            for input in &t.inputs {
                if !self.inputs.iter().any(|s| s.name == input.name) {
                    return bad(format!("smoke test {i}: unknown input {:?}", input.name));
                }
            }
            for out in &t.expected {
                if !self.outputs.iter().any(|s| s.name == out.name) {
                    return bad(format!("smoke test {i}: unknown output {:?}", out.name));
                }
            }
        }
        Ok(())
    }
}
