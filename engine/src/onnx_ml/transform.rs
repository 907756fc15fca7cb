//! Element-wise preprocessing operators: `Scaler`, `Imputer`, `Binarizer`, `Normalizer`.

use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::kernel::{Kernel, Rows, f32_tensor, i64_tensor};

/// A per-column parameter: one value for all columns, or one per column.
fn per_column<T>(op: &str, what: &str, v: &[T], c: usize) -> TractResult<()> {
    if v.len() != 1 && v.len() != c {
        bail!(
            "{op}: {what} has {} values but the input has {c} columns (need 1 or {c})",
            v.len()
        );
    }
    Ok(())
}

fn column<T: Copy>(v: &[T], j: usize) -> T {
    if v.len() == 1 { v[0] } else { v[j] }
}

/// Checks an N-D input as rows of its last dimension.
fn rows_of(t: &Tensor) -> (usize, usize) {
    let c = t.shape().last().copied().unwrap_or(1);
    (t.len().checked_div(c).unwrap_or(0), c)
}

#[derive(Debug)]
pub(crate) struct Scaler {
    offset: Vec<f32>,
    scale: Vec<f32>,
}

pub(crate) fn scaler(node: &NodeProto) -> TractResult<Scaler> {
    let offset: Vec<f32> = node
        .get_attr_opt_vec("offset")?
        .unwrap_or_else(|| vec![0.0]);
    let scale: Vec<f32> = node.get_attr_opt_vec("scale")?.unwrap_or_else(|| vec![1.0]);
    node.expect_attr("offset", !offset.is_empty(), "at least one value")?;
    node.expect_attr("scale", !scale.is_empty(), "at least one value")?;
    Ok(Scaler { offset, scale })
}

impl Kernel for Scaler {
    fn name(&self) -> &'static str {
        "Scaler"
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = inputs[0].cast_to::<f32>()?;
        let (_, c) = rows_of(&x);
        per_column("Scaler", "offset", &self.offset, c)?;
        per_column("Scaler", "scale", &self.scale, c)?;
        let data = x.try_as_plain_ram()?.as_slice::<f32>()?;
        let out = data
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let j = i % c.max(1);
                (v - column(&self.offset, j)) * column(&self.scale, j)
            })
            .collect();
        Ok(tvec!(f32_tensor(x.shape(), out)?))
    }
}

#[derive(Debug)]
pub(crate) enum Imputer {
    Float { values: Vec<f32>, replaced: f32 },
    Int { values: Vec<i64>, replaced: i64 },
}

pub(crate) fn imputer(node: &NodeProto) -> TractResult<Imputer> {
    let floats: Option<Vec<f32>> = node.get_attr_opt_vec("imputed_value_floats")?;
    let ints: Option<Vec<i64>> = node.get_attr_opt_vec("imputed_value_int64s")?;
    match (floats, ints) {
        (Some(values), None) if !values.is_empty() => Ok(Imputer::Float {
            values,
            replaced: node.get_attr_opt("replaced_value_float")?.unwrap_or(0.0),
        }),
        (None, Some(values)) if !values.is_empty() => Ok(Imputer::Int {
            values,
            replaced: node.get_attr_opt("replaced_value_int64")?.unwrap_or(0),
        }),
        _ => bail!(
            "Imputer node {:?}: exactly one of imputed_value_floats and imputed_value_int64s \
             must be set",
            node.name
        ),
    }
}

impl Kernel for Imputer {
    fn name(&self) -> &'static str {
        "Imputer"
    }

    fn output_types(&self, _: &[DatumType]) -> TractResult<TVec<DatumType>> {
        Ok(tvec!(match self {
            Imputer::Float { .. } => DatumType::F32,
            Imputer::Int { .. } => DatumType::I64,
        }))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (_, c) = rows_of(&inputs[0]);
        let shape = inputs[0].shape().to_vec();
        match self {
            Imputer::Float { values, replaced } => {
                per_column("Imputer", "imputed_value_floats", values, c)?;
                let x = inputs[0].cast_to::<f32>()?;
                let data = x.try_as_plain_ram()?.as_slice::<f32>()?;
                let out = data
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let missing = if replaced.is_nan() {
                            v.is_nan()
                        } else {
                            v == *replaced
                        };
                        if missing {
                            column(values, i % c.max(1))
                        } else {
                            v
                        }
                    })
                    .collect();
                Ok(tvec!(f32_tensor(&shape, out)?))
            }
            Imputer::Int { values, replaced } => {
                per_column("Imputer", "imputed_value_int64s", values, c)?;
                let x = inputs[0].cast_to::<i64>()?;
                let data = x.try_as_plain_ram()?.as_slice::<i64>()?;
                let out = data
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        if v == *replaced {
                            column(values, i % c.max(1))
                        } else {
                            v
                        }
                    })
                    .collect();
                Ok(tvec!(i64_tensor(&shape, out)?))
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct Binarizer {
    threshold: f32,
}

pub(crate) fn binarizer(node: &NodeProto) -> TractResult<Binarizer> {
    Ok(Binarizer {
        threshold: node.get_attr_opt("threshold")?.unwrap_or(0.0),
    })
}

impl Kernel for Binarizer {
    fn name(&self) -> &'static str {
        "Binarizer"
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = inputs[0].cast_to::<f32>()?;
        let data = x.try_as_plain_ram()?.as_slice::<f32>()?;
        // NaN is neither above nor below the threshold: onnxruntime refuses it, so do we.
        if let Some(i) = data.iter().position(|v| v.is_nan()) {
            bail!("Binarizer: input element {i} is NaN");
        }
        let out = data
            .iter()
            .map(|&v| f32::from(u8::from(v > self.threshold)))
            .collect();
        Ok(tvec!(f32_tensor(x.shape(), out)?))
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Normalizer {
    Max,
    L1,
    L2,
}

pub(crate) fn normalizer(node: &NodeProto) -> TractResult<Normalizer> {
    match node.get_attr_opt::<&str>("norm")?.unwrap_or("MAX") {
        "MAX" => Ok(Normalizer::Max),
        "L1" => Ok(Normalizer::L1),
        "L2" => Ok(Normalizer::L2),
        other => bail!(
            "Normalizer node {:?}: norm must be MAX, L1 or L2, got {other}",
            node.name
        ),
    }
}

impl Kernel for Normalizer {
    fn name(&self) -> &'static str {
        "Normalizer"
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let rows = Rows::new(&inputs[0], "Normalizer")?;
        let x = rows.as_slice()?;
        let mut out = x.to_vec();
        for row in out.chunks_exact_mut(rows.c.max(1)) {
            match self {
                Normalizer::Max => {
                    let max = row.iter().copied().fold(f32::MIN, f32::max);
                    if max != 0.0 {
                        row.iter_mut().for_each(|v| *v /= max);
                    }
                }
                Normalizer::L1 => {
                    let sum: f32 = row.iter().map(|v| v.abs()).sum();
                    if sum != 0.0 {
                        row.iter_mut().for_each(|v| *v /= sum);
                    }
                }
                Normalizer::L2 => {
                    let sum: f32 = row.iter().map(|v| v * v).sum();
                    if sum != 0.0 {
                        row.iter_mut()
                            .for_each(|v| *v = (*v * *v / sum).sqrt().copysign(*v));
                    }
                }
            }
        }
        Ok(tvec!(f32_tensor(inputs[0].shape(), out)?))
    }
}
