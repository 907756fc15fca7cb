//! Encoding one inference response: JSON, or with the Binary Tensor Data Extension a JSON
//! header followed by the bytes of the outputs asked for in binary.
//!
//! A binary output carries `parameters.binary_data_size` instead of `data`; its bytes follow
//! the JSON in output order (little-endian, row-major, a BOOL one byte), and the response's
//! `Inference-Header-Content-Length` header gives the JSON's length.

use edgefleet_common::{Tensor, TensorData};
use serde::Serialize;

#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputTensor<'a>>,
}

#[derive(Serialize)]
struct OutputTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [u64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParameters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<OutputData<'a>>,
}

#[derive(Serialize)]
struct BinaryParameters {
    binary_data_size: usize,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutputData<'a> {
    Bool(&'a [bool]),
    Int32(&'a [i32]),
    Int64(&'a [i64]),
    Fp32(&'a [f32]),
    Fp64(&'a [f64]),
}

impl<'a> OutputData<'a> {
    fn of(data: &'a TensorData) -> Self {
        match data {
            TensorData::Bool(v) => Self::Bool(v),
            TensorData::Int32(v) => Self::Int32(v),
            TensorData::Int64(v) => Self::Int64(v),
            TensorData::Fp32(v) => Self::Fp32(v),
            TensorData::Fp64(v) => Self::Fp64(v),
        }
    }
}

/// An encoded response: the body, and the JSON part's length when binary outputs follow it.
pub struct Encoded {
    pub body: Vec<u8>,
    pub header_length: Option<usize>,
}

/// Encodes `outputs`; `binary(name)` says which go back as bytes.
pub fn encode(
    model_name: &str,
    model_version: u64,
    id: Option<&str>,
    outputs: &[Tensor],
    binary: impl Fn(&str) -> bool,
) -> Result<Encoded, serde_json::Error> {
    let mut bytes = Vec::new();
    let outputs = outputs
        .iter()
        .map(|t| {
            let as_binary = binary(&t.name);
            if as_binary {
                t.data.write_le_bytes(&mut bytes);
            }
            OutputTensor {
                name: &t.name,
                datatype: t.data.datatype().as_str(),
                shape: &t.shape,
                parameters: as_binary.then(|| BinaryParameters {
                    binary_data_size: t.data.byte_len(),
                }),
                data: (!as_binary).then(|| OutputData::of(&t.data)),
            }
        })
        .collect::<Vec<_>>();
    let any_binary = outputs.iter().any(|o| o.parameters.is_some());
    let mut body = serde_json::to_vec(&InferResponse {
        model_name,
        model_version: model_version.to_string(),
        id,
        outputs,
    })?;
    let header_length = any_binary.then_some(body.len());
    body.extend_from_slice(&bytes);
    Ok(Encoded {
        body,
        header_length,
    })
}
