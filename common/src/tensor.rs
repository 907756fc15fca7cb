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
    /// The number of elements `shape` holds; `None` if it overflows.
    pub fn element_count(shape: &[u64]) -> Option<u64> {
        shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    /// Checks that the element count matches the shape.
    pub fn validate(&self) -> Result<()> {
        let expected = Self::element_count(&self.shape).ok_or_else(|| {
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

impl TensorData {
    /// Decodes the Open Inference Protocol's JSON `data` of a tensor: numbers (or booleans),
    /// row-major, flat or nested to any depth. At most `max_elements` are read, so a huge
    /// array is refused before it is copied.
    ///
    /// Every element must fit `datatype` exactly: integers in range, no fractions for integer
    /// types, and a number beyond FP32's range is refused rather than turned into infinity
    /// (JSON has no infinity, so an infinite input can only be a mistake). The error names the
    /// element. `datatype`s the agent does not serve (UINT*, INT8/16, FP16, BYTES) are refused.
    pub fn from_json(
        datatype: DataType,
        data: &serde_json::Value,
        max_elements: usize,
    ) -> Result<TensorData> {
        let mut flat = Vec::new();
        flatten(data, &mut flat, max_elements)?;
        let not_valid = format!("is not a valid {datatype}");
        Ok(match datatype {
            DataType::Fp32 => {
                let wide = each(&flat, &not_valid, serde_json::Value::as_f64)?;
                if let Some(i) = wide.iter().position(|&x| !(x as f32).is_finite()) {
                    return Err(bad_element(
                        i,
                        flat[i],
                        "is out of range for FP32 (±3.4e38)",
                    ));
                }
                TensorData::Fp32(wide.into_iter().map(|x| x as f32).collect())
            }
            DataType::Fp64 => TensorData::Fp64(each(&flat, &not_valid, serde_json::Value::as_f64)?),
            DataType::Int64 => {
                TensorData::Int64(each(&flat, &not_valid, serde_json::Value::as_i64)?)
            }
            DataType::Int32 => TensorData::Int32(each(&flat, &not_valid, |v| {
                v.as_i64().and_then(|x| i32::try_from(x).ok())
            })?),
            DataType::Bool => {
                TensorData::Bool(each(&flat, &not_valid, serde_json::Value::as_bool)?)
            }
            other => return Err(unserved(other)),
        })
    }

    /// Bytes per element in the protocol's binary form; an error naming the served datatypes
    /// for one that is not served.
    pub fn element_size(datatype: DataType) -> Result<usize> {
        match datatype {
            DataType::Bool => Ok(1),
            DataType::Int32 | DataType::Fp32 => Ok(4),
            DataType::Int64 | DataType::Fp64 => Ok(8),
            other => Err(unserved(other)),
        }
    }

    /// Decodes the Binary Tensor Data Extension's bytes: little-endian, row-major, no padding;
    /// a BOOL is one byte, 0 or 1. `bytes` must hold exactly a whole number of elements.
    pub fn from_le_bytes(datatype: DataType, bytes: &[u8]) -> Result<TensorData> {
        let size = Self::element_size(datatype)?;
        if !bytes.len().is_multiple_of(size) {
            return Err(Error::InvalidTensorData(format!(
                "{} bytes is not a whole number of {datatype} elements ({size} bytes each)",
                bytes.len()
            )));
        }
        fn le<const N: usize, T>(bytes: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
            bytes
                .chunks_exact(N)
                .map(|c| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(c);
                    f(a)
                })
                .collect()
        }
        Ok(match datatype {
            DataType::Fp32 => TensorData::Fp32(le(bytes, f32::from_le_bytes)),
            DataType::Fp64 => TensorData::Fp64(le(bytes, f64::from_le_bytes)),
            DataType::Int32 => TensorData::Int32(le(bytes, i32::from_le_bytes)),
            DataType::Int64 => TensorData::Int64(le(bytes, i64::from_le_bytes)),
            DataType::Bool => TensorData::Bool(
                bytes
                    .iter()
                    .enumerate()
                    .map(|(i, &b)| match b {
                        0 => Ok(false),
                        1 => Ok(true),
                        other => Err(Error::InvalidTensorData(format!(
                            "element {i} is byte {other:#04x}; a BOOL is one byte, 0 or 1"
                        ))),
                    })
                    .collect::<Result<_>>()?,
            ),
            other => return Err(unserved(other)),
        })
    }

    /// Appends the elements in the binary form `from_le_bytes` reads.
    pub fn write_le_bytes(&self, out: &mut Vec<u8>) {
        match self {
            Self::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
            Self::Int32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Self::Int64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Self::Fp32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Self::Fp64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        }
    }

    /// Bytes of the binary form.
    pub fn byte_len(&self) -> usize {
        let size = match self {
            Self::Bool(_) => 1,
            Self::Int32(_) | Self::Fp32(_) => 4,
            Self::Int64(_) | Self::Fp64(_) => 8,
        };
        size * self.len()
    }
}

/// Converts every element with `convert`; the first it refuses is named with `why`.
fn each<T>(
    flat: &[&serde_json::Value],
    why: &str,
    convert: impl Fn(&serde_json::Value) -> Option<T>,
) -> Result<Vec<T>> {
    flat.iter()
        .enumerate()
        .map(|(i, v)| convert(v).ok_or_else(|| bad_element(i, v, why)))
        .collect()
}

fn bad_element(i: usize, v: &serde_json::Value, why: &str) -> Error {
    Error::InvalidTensorData(format!("element {i} ({v}) {why}"))
}

fn unserved(datatype: DataType) -> Error {
    let hint = if datatype == DataType::Bytes {
        " (BYTES carries strings; the models this agent serves take numbers)"
    } else {
        ""
    };
    Error::InvalidTensorData(format!(
        "datatype {datatype} is not served{hint}: use FP32, FP64, INT32, INT64 or BOOL"
    ))
}

/// Flattens nested JSON arrays (row-major) into `out`, at most `max` leaves.
fn flatten<'a>(
    v: &'a serde_json::Value,
    out: &mut Vec<&'a serde_json::Value>,
    max: usize,
) -> Result<()> {
    match v {
        serde_json::Value::Array(items) => {
            for i in items {
                flatten(i, out, max)?;
            }
        }
        leaf => {
            if out.len() >= max {
                return Err(Error::InvalidTensorData(format!(
                    "more than {max} elements"
                )));
            }
            out.push(leaf);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_data_flat_or_nested_with_every_element_checked() {
        let d = TensorData::from_json(DataType::Fp32, &json!([[1, 2.5], [3, 4]]), 10);
        assert_eq!(d, Ok(TensorData::Fp32(vec![1.0, 2.5, 3.0, 4.0])));
        let e = TensorData::from_json(DataType::Fp32, &json!([1.0, 1e300]), 10)
            .expect_err("beyond FP32")
            .to_string();
        assert!(
            e.contains("element 1") && e.contains("out of range for FP32"),
            "{e}"
        );
        assert_eq!(
            TensorData::from_json(DataType::Fp64, &json!([1e300]), 10),
            Ok(TensorData::Fp64(vec![1e300]))
        );
        let e = TensorData::from_json(DataType::Int32, &json!([1, 3_000_000_000_i64]), 10)
            .expect_err("beyond INT32")
            .to_string();
        assert!(
            e.contains("element 1") && e.contains("not a valid INT32"),
            "{e}"
        );
        let e = TensorData::from_json(DataType::Int64, &json!([1.5]), 10)
            .expect_err("a fraction")
            .to_string();
        assert!(e.contains("not a valid INT64"), "{e}");
        let e = TensorData::from_json(DataType::Bool, &json!([true, 1]), 10)
            .expect_err("a number for BOOL")
            .to_string();
        assert!(e.contains("element 1"), "{e}");
        let e = TensorData::from_json(DataType::Fp32, &json!([1, 2, 3]), 2)
            .expect_err("too many")
            .to_string();
        assert!(e.contains("more than 2 elements"), "{e}");
        let e = TensorData::from_json(DataType::Bytes, &json!(["a"]), 2)
            .expect_err("BYTES")
            .to_string();
        assert!(e.contains("BYTES") && e.contains("not served"), "{e}");
    }

    #[test]
    fn binary_data_round_trips_and_refuses_partial_elements_and_bad_bools() {
        for d in [
            TensorData::Fp32(vec![1.5, -0.0, 3.25]),
            TensorData::Fp64(vec![1e300, -2.0]),
            TensorData::Int32(vec![i32::MIN, 7]),
            TensorData::Int64(vec![i64::MAX, -1]),
            TensorData::Bool(vec![true, false, true]),
        ] {
            let mut bytes = Vec::new();
            d.write_le_bytes(&mut bytes);
            assert_eq!(bytes.len(), d.byte_len());
            assert_eq!(TensorData::from_le_bytes(d.datatype(), &bytes), Ok(d));
        }
        assert_eq!(
            TensorData::from_le_bytes(DataType::Fp32, &1.5f32.to_le_bytes()),
            Ok(TensorData::Fp32(vec![1.5]))
        );
        let e = TensorData::from_le_bytes(DataType::Fp32, &[0; 6])
            .expect_err("6 bytes")
            .to_string();
        assert!(e.contains("not a whole number of FP32"), "{e}");
        let e = TensorData::from_le_bytes(DataType::Bool, &[0, 2])
            .expect_err("2 is not a bool")
            .to_string();
        assert!(e.contains("element 1") && e.contains("0x02"), "{e}");
        let e = TensorData::from_le_bytes(DataType::Bytes, &[0; 4])
            .expect_err("BYTES")
            .to_string();
        assert!(e.contains("BYTES"), "{e}");
    }
}
