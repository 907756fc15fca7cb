//! Tensors as they appear in manifests (schemas, smoke tests) and the inference protocol.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Element types, named as the Open Inference Protocol v2 names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 13] = [
        Self::Bool,
        Self::Uint8,
        Self::Uint16,
        Self::Uint32,
        Self::Uint64,
        Self::Int8,
        Self::Int16,
        Self::Int32,
        Self::Int64,
        Self::Fp16,
        Self::Fp32,
        Self::Fp64,
        Self::Bytes,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::Uint8 => "UINT8",
            Self::Uint16 => "UINT16",
            Self::Uint32 => "UINT32",
            Self::Uint64 => "UINT64",
            Self::Int8 => "INT8",
            Self::Int16 => "INT16",
            Self::Int32 => "INT32",
            Self::Int64 => "INT64",
            Self::Fp16 => "FP16",
            Self::Fp32 => "FP32",
            Self::Fp64 => "FP64",
            Self::Bytes => "BYTES",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Row-major element data for the types Edgefleet serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TensorData {
    Bool(Vec<bool>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            Self::Bool(v) => v.len(),
            Self::Int32(v) => v.len(),
            Self::Int64(v) => v.len(),
            Self::Fp32(v) => v.len(),
            Self::Fp64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn datatype(&self) -> DataType {
        match self {
            Self::Bool(_) => DataType::Bool,
            Self::Int32(_) => DataType::Int32,
            Self::Int64(_) => DataType::Int64,
            Self::Fp32(_) => DataType::Fp32,
            Self::Fp64(_) => DataType::Fp64,
        }
    }

    /// Element `i` widened to f64 (`None` past the end).
    pub fn get_f64(&self, i: usize) -> Option<f64> {
        Some(match self {
            Self::Bool(v) => f64::from(u8::from(*v.get(i)?)),
            Self::Int32(v) => f64::from(*v.get(i)?),
            Self::Int64(v) => *v.get(i)? as f64,
            Self::Fp32(v) => f64::from(*v.get(i)?),
            Self::Fp64(v) => *v.get(i)?,
        })
    }

    /// Values widened to f64 for tolerance comparisons.
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            Self::Bool(v) => v.iter().map(|&b| f64::from(u8::from(b))).collect(),
            Self::Int32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            // Precision loss above 2^53 is acceptable for a tolerance check.
            Self::Int64(v) => v.iter().map(|&x| x as f64).collect(),
            Self::Fp32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Self::Fp64(v) => v.clone(),
        }
    }
}

/// A named tensor with its shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<u64>,
    pub data: TensorData,
}

impl Tensor {
    /// Checks that the element count matches the shape.
    pub fn validate(&self) -> Result<()> {
        let expected = self
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| {
                Error::InvalidManifest(format!("tensor {:?}: shape overflows", self.name))
            })?;
        if expected != self.data.len() as u64 {
            return Err(Error::InvalidManifest(format!(
                "tensor {:?}: shape {:?} needs {expected} elements, data has {}",
                self.name,
                self.shape,
                self.data.len()
            )));
        }
        Ok(())
    }
}
