//! Encoders and plumbing: `OneHotEncoder`, `LabelEncoder`, `ArrayFeatureExtractor`, `ZipMap`.
//! Only numeric tensors are served (the inference protocol's BYTES is not), so string
//! categories and labels are refused at load time with a message saying so.

use std::collections::HashMap;

use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::kernel::{Kernel, f32_tensor, i64_tensor};

fn no_strings(node: &NodeProto, attrs: &[&str], what: &str) -> TractResult<()> {
    for attr in attrs {
        if node.attribute.iter().any(|a| &a.name == attr) {
            bail!(
                "{} node {:?}: {what} ({attr}) are not served: the inference protocol's BYTES \
                 tensors are not supported; encode categories as integers before export",
                node.op_type,
                node.name
            );
        }
    }
    Ok(())
}

#[derive(Debug)]
pub(crate) struct OneHotEncoder {
    index: HashMap<i64, usize>,
    n: usize,
    zeros: bool,
}

pub(crate) fn one_hot_encoder(node: &NodeProto) -> TractResult<OneHotEncoder> {
    no_strings(node, &["cats_strings"], "string categories")?;
    let cats: Vec<i64> = node.get_attr_vec("cats_int64s")?;
    node.expect_attr("cats_int64s", !cats.is_empty(), "at least one category")?;
    let mut index = HashMap::with_capacity(cats.len());
    for (i, &c) in cats.iter().enumerate() {
        // onnxruntime keeps the first position of a repeated category.
        index.entry(c).or_insert(i);
    }
    Ok(OneHotEncoder {
        index,
        n: cats.len(),
        zeros: node.get_attr_opt::<i64>("zeros")?.unwrap_or(1) != 0,
    })
}

impl Kernel for OneHotEncoder {
    fn name(&self) -> &'static str {
        "OneHotEncoder"
    }

    fn output_shapes(&self, inputs: &[TVec<TDim>]) -> TractResult<TVec<TVec<TDim>>> {
        let mut shape = inputs[0].clone();
        shape.push(self.n.into());
        Ok(tvec!(shape))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let keys: Vec<i64> = match x.datum_type() {
            DatumType::I64 => x.try_as_plain_ram()?.as_slice::<i64>()?.to_vec(),
            DatumType::I32 => x
                .try_as_plain_ram()?
                .as_slice::<i32>()?
                .iter()
                .map(|&v| i64::from(v))
                .collect(),
            _ => {
                let f = x.cast_to::<f64>()?;
                // Truncation toward zero, as onnxruntime's static_cast does.
                f.try_as_plain_ram()?
                    .as_slice::<f64>()?
                    .iter()
                    .map(|&v| v as i64)
                    .collect()
            }
        };
        let total = keys
            .len()
            .checked_mul(self.n)
            .filter(|&t| t <= 1 << 28)
            .ok_or_else(|| format_err!("OneHotEncoder: output too large"))?;
        let mut out = vec![0f32; total];
        for (i, key) in keys.iter().enumerate() {
            match self.index.get(key) {
                Some(&j) => out[i * self.n + j] = 1.0,
                None if self.zeros => {}
                None => bail!("OneHotEncoder: unknown category {key} (and zeros = 0)"),
            }
        }
        let mut shape = x.shape().to_vec();
        shape.push(self.n);
        Ok(tvec!(f32_tensor(&shape, out)?))
    }
}

/// A LabelEncoder mapping between int64 and float keys/values.
#[derive(Debug)]
pub(crate) struct LabelEncoder {
    /// Keys as their f64 bit pattern (int64 keys are converted exactly below 2^53).
    map: HashMap<KeyBits, Value>,
    keys: KeyType,
    default: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct KeyBits(u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Int,
    Float,
}

#[derive(Debug, Clone, Copy)]
enum Value {
    Int(i64),
    Float(f32),
}

fn float_key(v: f32) -> KeyBits {
    // Every NaN is the same key; -0.0 and 0.0 too.
    if v.is_nan() {
        KeyBits(u64::MAX)
    } else if v == 0.0 {
        KeyBits(0)
    } else {
        KeyBits(u64::from(v.to_bits()))
    }
}

pub(crate) fn label_encoder(node: &NodeProto) -> TractResult<LabelEncoder> {
    no_strings(
        node,
        &["keys_strings", "values_strings"],
        "string keys or values",
    )?;
    for attr in ["keys_tensor", "values_tensor", "default_tensor"] {
        if node.attribute.iter().any(|a| a.name == attr) {
            bail!(
                "LabelEncoder node {:?}: {attr} is not supported; use keys_int64s / keys_floats \
                 and values_int64s / values_floats",
                node.name
            );
        }
    }
    let ki: Option<Vec<i64>> = node.get_attr_opt_vec("keys_int64s")?;
    let kf: Option<Vec<f32>> = node.get_attr_opt_vec("keys_floats")?;
    let vi: Option<Vec<i64>> = node.get_attr_opt_vec("values_int64s")?;
    let vf: Option<Vec<f32>> = node.get_attr_opt_vec("values_floats")?;
    let (keys, key_type): (Vec<KeyBits>, KeyType) = match (ki, kf) {
        (Some(k), None) => (k.iter().map(|&v| KeyBits(v as u64)).collect(), KeyType::Int),
        (None, Some(k)) => (k.iter().map(|&v| float_key(v)).collect(), KeyType::Float),
        _ => bail!(
            "LabelEncoder node {:?}: exactly one of keys_int64s and keys_floats must be set",
            node.name
        ),
    };
    let (values, default): (Vec<Value>, Value) = match (vi, vf) {
        (Some(v), None) => (
            v.into_iter().map(Value::Int).collect(),
            Value::Int(node.get_attr_opt("default_int64")?.unwrap_or(-1)),
        ),
        (None, Some(v)) => (
            v.into_iter().map(Value::Float).collect(),
            Value::Float(node.get_attr_opt("default_float")?.unwrap_or(-0.0)),
        ),
        _ => bail!(
            "LabelEncoder node {:?}: exactly one of values_int64s and values_floats must be set",
            node.name
        ),
    };
    node.expect_attr(
        "values",
        keys.len() == values.len(),
        "as many values as keys",
    )?;
    let mut map = HashMap::with_capacity(keys.len());
    for (k, v) in keys.into_iter().zip(values) {
        map.entry(k).or_insert(v);
    }
    Ok(LabelEncoder {
        map,
        keys: key_type,
        default,
    })
}

impl Kernel for LabelEncoder {
    fn name(&self) -> &'static str {
        "LabelEncoder"
    }

    fn output_types(&self, _: &[DatumType]) -> TractResult<TVec<DatumType>> {
        Ok(tvec!(match self.default {
            Value::Int(_) => DatumType::I64,
            Value::Float(_) => DatumType::F32,
        }))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let keys: Vec<KeyBits> = match self.keys {
            KeyType::Int => {
                if !matches!(x.datum_type(), DatumType::I64 | DatumType::I32) {
                    bail!(
                        "LabelEncoder: the keys are int64, the input is {:?}",
                        x.datum_type()
                    );
                }
                let x = x.cast_to::<i64>()?;
                x.try_as_plain_ram()?
                    .as_slice::<i64>()?
                    .iter()
                    .map(|&v| KeyBits(v as u64))
                    .collect()
            }
            KeyType::Float => {
                let x = x.cast_to::<f32>()?;
                x.try_as_plain_ram()?
                    .as_slice::<f32>()?
                    .iter()
                    .map(|&v| float_key(v))
                    .collect()
            }
        };
        let looked_up = keys
            .iter()
            .map(|k| self.map.get(k).copied().unwrap_or(self.default));
        let shape = x.shape().to_vec();
        Ok(tvec!(match self.default {
            Value::Int(_) => i64_tensor(
                &shape,
                looked_up
                    .map(|v| match v {
                        Value::Int(i) => i,
                        Value::Float(f) => f as i64,
                    })
                    .collect()
            )?,
            Value::Float(_) => f32_tensor(
                &shape,
                looked_up
                    .map(|v| match v {
                        Value::Float(f) => f,
                        Value::Int(i) => i as f32,
                    })
                    .collect()
            )?,
        }))
    }
}

/// Selects columns of the last axis by index (input 1, int64).
#[derive(Debug)]
pub(crate) struct ArrayFeatureExtractor;

impl Kernel for ArrayFeatureExtractor {
    fn name(&self) -> &'static str {
        "ArrayFeatureExtractor"
    }

    fn n_inputs(&self) -> usize {
        2
    }

    fn output_types(&self, inputs: &[DatumType]) -> TractResult<TVec<DatumType>> {
        Ok(tvec!(inputs[0]))
    }

    fn output_shapes(&self, inputs: &[TVec<TDim>]) -> TractResult<TVec<TVec<TDim>>> {
        let k: TDim = inputs[1].iter().product();
        let mut shape = inputs[0].clone();
        if shape.len() <= 1 {
            return Ok(tvec!(tvec!(1.into(), k)));
        }
        if let Some(last) = shape.last_mut() {
            *last = k;
        }
        Ok(tvec!(shape))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, idx) = (&inputs[0], &inputs[1]);
        let idx = idx.cast_to::<i64>()?;
        let idx = idx.try_as_plain_ram()?.as_slice::<i64>()?;
        let c = x.shape().last().copied().unwrap_or(0);
        let cols: Vec<usize> = idx
            .iter()
            .map(|&i| {
                usize::try_from(i).ok().filter(|&i| i < c).ok_or_else(|| {
                    format_err!("ArrayFeatureExtractor: index {i} out of range for {c} columns")
                })
            })
            .collect::<TractResult<_>>()?;
        let mut shape = x.shape().to_vec();
        if shape.len() <= 1 {
            shape = vec![1, cols.len()];
        } else if let Some(last) = shape.last_mut() {
            *last = cols.len();
        }
        fn pick<T: Datum + Copy>(
            x: &Tensor,
            c: usize,
            cols: &[usize],
            shape: &[usize],
        ) -> TractResult<TValue> {
            let data = x.try_as_plain_ram()?.as_slice::<T>()?;
            let out: Vec<T> = data
                .chunks_exact(c.max(1))
                .flat_map(|row| cols.iter().map(move |&j| row[j]))
                .collect();
            Ok(tract_ndarray::ArrayD::from_shape_vec(shape, out)?
                .into_tensor()
                .into_tvalue())
        }
        let out = match x.datum_type() {
            DatumType::F32 => pick::<f32>(x, c, &cols, &shape)?,
            DatumType::F64 => pick::<f64>(x, c, &cols, &shape)?,
            DatumType::I64 => pick::<i64>(x, c, &cols, &shape)?,
            DatumType::I32 => pick::<i32>(x, c, &cols, &shape)?,
            other => bail!("ArrayFeatureExtractor: input type {other:?} is not supported"),
        };
        Ok(tvec!(out))
    }
}

/// `ZipMap` turns a probability matrix into a sequence of {label: probability} maps. The
/// inference protocol has tensors, not maps: the agent serves the matrix itself (FP32,
/// `[N, classes]`, columns in class-label order), which is what every client turns the maps
/// back into anyway.
#[derive(Debug)]
pub(crate) struct ZipMap {
    n: usize,
}

pub(crate) fn zip_map(node: &NodeProto) -> TractResult<ZipMap> {
    let n = match node.get_attr_opt_vec::<i64>("classlabels_int64s")? {
        Some(v) => v.len(),
        None => node
            .get_attr_opt_tvec::<&str>("classlabels_strings")?
            .map(|v| v.len())
            .unwrap_or(0),
    };
    node.expect(
        n > 0,
        "ZipMap needs classlabels_int64s or classlabels_strings",
    )?;
    Ok(ZipMap { n })
}

impl Kernel for ZipMap {
    fn name(&self) -> &'static str {
        "ZipMap"
    }

    fn output_shapes(&self, inputs: &[TVec<TDim>]) -> TractResult<TVec<TVec<TDim>>> {
        let n = super::kernel::batch_dim("ZipMap", &inputs[0])?;
        Ok(tvec!(tvec!(n, self.n.into())))
    }

    fn eval(&self, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = inputs.remove(0);
        let c = x.shape().last().copied().unwrap_or(0);
        if c != self.n {
            bail!("ZipMap: {} class labels but {c} scores per row", self.n);
        }
        if x.datum_type() == DatumType::F32 && x.rank() == 2 {
            return Ok(tvec!(x));
        }
        let rows = x.len() / c.max(1);
        let t = x.cast_to::<f32>()?.into_owned().into_shape(&[rows, c])?;
        Ok(tvec!(t.into_tvalue()))
    }
}
