//! Decoding one inference request: the JSON body, or the Binary Tensor Data Extension's JSON
//! header followed by raw tensor bytes.
//!
//! With the extension, the `Inference-Header-Content-Length` header gives the JSON header's
//! length; each input whose `parameters.binary_data_size` is set has its bytes after the
//! header, in input order (little-endian, row-major, no padding; a BOOL is one byte). Every
//! size is untrusted: the header length must lie within the body, each input's size must be
//! its shape's element count × the element size, and the sizes must add up to exactly the
//! bytes that follow. A binary input becomes the same `Tensor` as the same input sent as JSON,
//! so inference, window profiling and telemetry cannot tell them apart.

use edgefleet_common::{DataType, Tensor, TensorData};
use serde::Deserialize;

use super::MAX_ELEMENTS;

/// The header naming the JSON part's length in a binary request or response.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    /// The outputs asked for (empty: all), each with its own binary choice if it made one.
    pub outputs: Vec<Wanted>,
    /// `parameters.binary_data_output`: the default for outputs that made no choice.
    pub binary_output: bool,
}

#[derive(Debug)]
pub struct Wanted {
    pub name: String,
    pub binary: Option<bool>,
}

impl Request {
    /// Whether output `name` goes back as binary data.
    pub fn binary(&self, name: &str) -> bool {
        self.outputs
            .iter()
            .find(|w| w.name == name)
            .and_then(|w| w.binary)
            .unwrap_or(self.binary_output)
    }
}

#[derive(Deserialize)]
struct Header {
    id: Option<String>,
    #[serde(default)]
    parameters: Option<RequestParameters>,
    inputs: Vec<InputTensor>,
    #[serde(default)]
    outputs: Vec<RequestedOutput>,
}

#[derive(Deserialize, Default)]
struct RequestParameters {
    #[serde(default)]
    binary_data_output: bool,
}

#[derive(Deserialize)]
struct InputTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    /// Kept raw: flat arrays (the common case) are parsed straight into typed vectors.
    data: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    parameters: Option<InputParameters>,
}

#[derive(Deserialize, Default)]
struct InputParameters {
    binary_data_size: Option<u64>,
}

#[derive(Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Option<OutputParameters>,
}

#[derive(Deserialize, Default)]
struct OutputParameters {
    binary_data: Option<bool>,
    classification: Option<serde_json::Value>,
}

/// Decodes a request body. `header_length` is the `Inference-Header-Content-Length` header's
/// value, if the client sent one. Errors say what was wrong, for a 400.
pub fn decode(body: &[u8], header_length: Option<&[u8]>) -> Result<Request, String> {
    let (json, mut binary) = match header_length {
        None => (body, &[][..]),
        Some(raw) => {
            let n = std::str::from_utf8(raw)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    format!(
                        "Inference-Header-Content-Length must be the JSON header's length in bytes, got {:?}",
                        String::from_utf8_lossy(raw)
                    )
                })?;
            if n > body.len() {
                return Err(format!(
                    "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                    body.len()
                ));
            }
            body.split_at(n)
        }
    };
    let header: Header = serde_json::from_slice(json).map_err(|e| {
        // Bytes after the JSON without the header: a binary request missing its header.
        let hint = if header_length.is_none() && e.to_string().starts_with("trailing characters") {
            "; binary tensor data after the JSON needs the Inference-Header-Content-Length \
             header (the JSON part's length in bytes)"
        } else {
            ""
        };
        format!("malformed inference request: {e}{hint}")
    })?;
    let after_header = binary.len();
    let mut inputs = Vec::with_capacity(header.inputs.len());
    for t in &header.inputs {
        inputs.push(input(t, &mut binary, header_length.is_some())?);
    }
    if !binary.is_empty() {
        return Err(format!(
            "{} bytes follow the JSON header but the inputs' binary_data_size add up to {}: \
             the sizes must account for every byte",
            after_header,
            after_header - binary.len()
        ));
    }
    let outputs = header
        .outputs
        .into_iter()
        .map(|o| {
            let p = o.parameters.unwrap_or_default();
            if p.classification.is_some() {
                return Err(format!(
                    "output {:?}: the classification extension is not supported; ask for the \
                     output itself",
                    o.name
                ));
            }
            Ok(Wanted {
                name: o.name,
                binary: p.binary_data,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Request {
        id: header.id,
        inputs,
        outputs,
        binary_output: header.parameters.is_some_and(|p| p.binary_data_output),
    })
}

/// One input: its bytes taken from the front of `binary` when it says it is binary, its JSON
/// `data` otherwise.
fn input(t: &InputTensor, binary: &mut &[u8], has_header: bool) -> Result<Tensor, String> {
    let named = |e: &dyn std::fmt::Display| format!("input {:?}: {e}", t.name);
    let datatype = DataType::parse(&t.datatype).ok_or_else(|| {
        named(&format!(
            "unknown datatype {:?} (use FP32, FP64, INT32, INT64 or BOOL)",
            t.datatype
        ))
    })?;
    let shape: Vec<u64> = t
        .shape
        .iter()
        .map(|&d| u64::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| named(&format!("negative dimension in shape {:?}", t.shape)))?;
    let binary_size = t.parameters.as_ref().and_then(|p| p.binary_data_size);
    let data = match (binary_size, &t.data) {
        (Some(_), Some(_)) => {
            return Err(named(
                &"has both data and parameters.binary_data_size; send one",
            ));
        }
        (None, None) => {
            return Err(named(
                &"missing field `data` (or parameters.binary_data_size with the bytes after \
                  the JSON header)",
            ));
        }
        (Some(size), None) => {
            if !has_header {
                return Err(named(
                    &"parameters.binary_data_size needs the Inference-Header-Content-Length \
                      header (the length of the JSON part of the body)",
                ));
            }
            take_binary(&shape, datatype, size, binary).map_err(|e| named(&e))?
        }
        (None, Some(raw)) => from_json(datatype, raw.get()).map_err(|e| named(&e))?,
    };
    let tensor = Tensor {
        name: t.name.clone(),
        shape,
        data,
    };
    tensor.validate().map_err(|e| e.to_string())?;
    Ok(tensor)
}

/// Takes `size` bytes off the front of `binary` and decodes them, after checking the size
/// against the shape.
fn take_binary(
    shape: &[u64],
    datatype: DataType,
    size: u64,
    binary: &mut &[u8],
) -> Result<TensorData, String> {
    let element = TensorData::element_size(datatype).map_err(|e| e.to_string())?;
    let elements = Tensor::element_count(shape)
        .filter(|&n| n <= MAX_ELEMENTS as u64)
        .ok_or_else(|| format!("shape {shape:?} has more than {MAX_ELEMENTS} elements"))?;
    let expected = elements * element as u64;
    if size != expected {
        return Err(format!(
            "binary_data_size is {size}, but shape {shape:?} of {datatype} needs {elements} × \
             {element} = {expected} bytes"
        ));
    }
    // `size` ≤ MAX_ELEMENTS × 8, so it fits a usize on every target the agent runs on.
    let size =
        usize::try_from(size).map_err(|_| format!("binary_data_size {size} is too large"))?;
    if size > binary.len() {
        return Err(format!(
            "binary_data_size is {size} but only {} bytes are left after the JSON header and \
             the inputs before it",
            binary.len()
        ));
    }
    let (mine, rest) = binary.split_at(size);
    *binary = rest;
    TensorData::from_le_bytes(datatype, mine).map_err(|e| e.to_string())
}

/// JSON `data`: a flat array straight into a typed vector (the fast path), otherwise the
/// general decoder, which handles nesting and names the element that is wrong.
fn from_json(datatype: DataType, raw: &str) -> Result<TensorData, String> {
    fn flat<T: serde::de::DeserializeOwned>(raw: &str) -> Option<Vec<T>> {
        serde_json::from_str(raw).ok()
    }
    let fast = match datatype {
        // serde turns a number beyond FP32's range into infinity: such data takes the general
        // path, which refuses it by element.
        DataType::Fp32 => flat::<f32>(raw)
            .filter(|v| v.iter().all(|x| x.is_finite()))
            .map(TensorData::Fp32),
        DataType::Fp64 => flat::<f64>(raw).map(TensorData::Fp64),
        DataType::Int64 => flat::<i64>(raw).map(TensorData::Int64),
        DataType::Int32 => flat::<i32>(raw).map(TensorData::Int32),
        DataType::Bool => flat::<bool>(raw).map(TensorData::Bool),
        _ => None,
    };
    match fast {
        Some(d) if d.len() <= MAX_ELEMENTS => Ok(d),
        Some(_) => Err(format!("more than {MAX_ELEMENTS} elements")),
        None => {
            let value: serde_json::Value = serde_json::from_str(raw).map_err(|e| {
                // A number beyond f64's range (JSON has no infinity, so it is a mistake):
                // serde_json refuses it while parsing, before any element can be named.
                if e.to_string().starts_with("number out of range") {
                    format!(
                        "a number in data is out of range for {datatype} (the number ending at \
                         line {} column {} of data)",
                        e.line(),
                        e.column()
                    )
                } else {
                    format!("bad data: {e}")
                }
            })?;
            TensorData::from_json(datatype, &value, MAX_ELEMENTS).map_err(|e| e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary_body(header: &serde_json::Value, bytes: &[u8]) -> (Vec<u8>, String) {
        let mut body = serde_json::to_vec(header).expect("json");
        let n = body.len().to_string();
        body.extend_from_slice(bytes);
        (body, n)
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn a_binary_input_decodes_to_the_same_tensor_as_json() {
        let json = serde_json::json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, -2.0]}]});
        let a = decode(&serde_json::to_vec(&json).expect("json"), None).expect("json");
        let header = serde_json::json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}], "parameters": {"binary_data_output": true}});
        let (body, n) = binary_body(&header, &f32_bytes(&[1.5, -2.0]));
        let b = decode(&body, Some(n.as_bytes())).expect("binary");
        assert_eq!(a.inputs, b.inputs);
        assert!(!a.binary_output && b.binary_output);
        assert!(b.binary("y"));
    }

    #[test]
    fn every_untrusted_size_is_checked() {
        let one = |size: u64| serde_json::json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": size}}]});
        let cases: Vec<(Vec<u8>, Option<String>, &str)> = vec![
            // The header length past the body.
            {
                let (b, _) = binary_body(&one(8), &f32_bytes(&[1.0, 2.0]));
                (b, Some("9999".into()), "body has only")
            },
            // Not a number.
            {
                let (b, _) = binary_body(&one(8), &f32_bytes(&[1.0, 2.0]));
                (b, Some("ten".into()), "must be the JSON header's length")
            },
            // The size disagrees with the shape.
            {
                let (b, n) = binary_body(&one(4), &f32_bytes(&[1.0]));
                (b, Some(n), "needs 2 × 4 = 8 bytes")
            },
            // Fewer bytes than the size.
            {
                let (b, n) = binary_body(&one(8), &f32_bytes(&[1.0]));
                (b, Some(n), "only 4 bytes are left")
            },
            // Bytes nobody accounts for.
            {
                let (b, n) = binary_body(&one(8), &f32_bytes(&[1.0, 2.0, 3.0]));
                (b, Some(n), "must account for every byte")
            },
            // A binary size without the header.
            {
                let (b, _) = binary_body(&one(8), &f32_bytes(&[1.0, 2.0]));
                (b, None, "needs the Inference-Header-Content-Length header")
            },
            // Both data and binary.
            {
                let h = serde_json::json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2], "parameters": {"binary_data_size": 8}}]});
                let (b, n) = binary_body(&h, &f32_bytes(&[1.0, 2.0]));
                (b, Some(n), "both data and")
            },
            // BYTES.
            {
                let h = serde_json::json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 5}}]});
                let (b, n) = binary_body(&h, b"\x01\x00\x00\x00a");
                (b, Some(n), "BYTES carries strings")
            },
            // A shape whose element count overflows.
            {
                let h = serde_json::json!({"inputs": [{"name": "x", "shape": [4294967296u64, 4294967296u64], "datatype": "FP32", "parameters": {"binary_data_size": 0}}]});
                let (b, n) = binary_body(&h, b"");
                (b, Some(n), "more than")
            },
            // A shape over the element cap, with the binary_data_size (and the bytes) it
            // would need: refused by the cap, not by a size mismatch.
            {
                let n = MAX_ELEMENTS as u64 + 1;
                let h = serde_json::json!({"inputs": [{"name": "x", "shape": [1, n], "datatype": "FP32", "parameters": {"binary_data_size": n * 4}}]});
                let (b, n) = binary_body(&h, &vec![0u8; (MAX_ELEMENTS + 1) * 4]);
                (
                    b,
                    Some(n),
                    "input \"x\": shape [1, 1048577] has more than 1048576 elements",
                )
            },
            // A BOOL byte that is not 0 or 1.
            {
                let h = serde_json::json!({"inputs": [{"name": "x", "shape": [2], "datatype": "BOOL", "parameters": {"binary_data_size": 2}}]});
                let (b, n) = binary_body(&h, &[1, 7]);
                (b, Some(n), "0x07")
            },
            // JSON beyond FP32's range.
            (
                br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1e300]}]}"#.to_vec(),
                None,
                "out of range for FP32",
            ),
            // JSON beyond f64's range, for FP64: serde_json cannot even parse it.
            (
                br#"{"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [1, 1e400]}]}"#.to_vec(),
                None,
                "input \"x\": a number in data is out of range for FP64 (the number ending at line 1 \
                 column 9 of data)",
            ),
            // Neither data nor a binary size.
            (
                br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}"#.to_vec(),
                None,
                "missing field `data`",
            ),
            // The classification extension.
            (
                br#"{"inputs": [], "outputs": [{"name": "y", "parameters": {"classification": 2}}]}"#.to_vec(),
                None,
                "classification",
            ),
        ];
        for (body, header, needle) in cases {
            let e = decode(&body, header.as_deref().map(str::as_bytes)).expect_err(needle);
            assert!(e.contains(needle), "{e:?} should contain {needle:?}");
        }
    }

    #[test]
    fn several_binary_inputs_are_taken_in_order() {
        let header = serde_json::json!({"inputs": [
            {"name": "a", "shape": [2], "datatype": "INT64", "parameters": {"binary_data_size": 16}},
            {"name": "j", "shape": [1], "datatype": "INT32", "data": [5]},
            {"name": "d", "shape": [3], "datatype": "BOOL", "parameters": {"binary_data_size": 3}}
        ], "outputs": [{"name": "y", "parameters": {"binary_data": false}}, {"name": "z", "parameters": {"binary_data": true}}]});
        let mut bytes: Vec<u8> = [7i64, -1].iter().flat_map(|x| x.to_le_bytes()).collect();
        bytes.extend_from_slice(&[1, 0, 1]);
        let (body, n) = binary_body(&header, &bytes);
        let r = decode(&body, Some(n.as_bytes())).expect("decode");
        assert_eq!(r.inputs[0].data, TensorData::Int64(vec![7, -1]));
        assert_eq!(r.inputs[1].data, TensorData::Int32(vec![5]));
        assert_eq!(r.inputs[2].data, TensorData::Bool(vec![true, false, true]));
        assert!(!r.binary("y") && r.binary("z") && !r.binary("other"));
    }
}
