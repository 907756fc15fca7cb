//! The glue between our ONNX-ML kernels and tract: one hir expansion (shape and type
//! inference while the model is analysed) and one typed op (evaluation in the optimised plan),
//! both generic over a [`Kernel`].

use std::fmt;
use std::sync::Arc;

use tract_onnx::tract_hir::internal::*;

/// One ONNX-ML node with its attributes parsed and validated at load time. `eval` must never
/// panic on any input: bad inputs (wrong width, index out of range) are errors.
pub(crate) trait Kernel: fmt::Debug + Send + Sync + 'static {
    /// The ONNX operator name, for messages and `tract` dumps.
    fn name(&self) -> &'static str;
    fn n_inputs(&self) -> usize {
        1
    }
    fn n_outputs(&self) -> usize {
        1
    }
    /// Output datum types from the input datum types. Default: one FP32 output, what most
    /// ONNX-ML operators produce.
    fn output_types(&self, _inputs: &[DatumType]) -> TractResult<TVec<DatumType>> {
        Ok(tvec!(DatumType::F32))
    }
    /// Output shapes from the input shapes (batch dimensions may be symbolic). Default: the
    /// first input's shape, as for the element-wise operators.
    fn output_shapes(&self, inputs: &[TVec<TDim>]) -> TractResult<TVec<TVec<TDim>>> {
        Ok(tvec!(inputs[0].clone()))
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>>;
}

/// The node in the inference model: answers tract's type/shape questions, then wires
/// [`MlOp`] into the typed model.
#[derive(Debug, Clone)]
pub(crate) struct MlNode(pub Arc<dyn Kernel>);

pub(crate) fn node(kernel: impl Kernel) -> Box<dyn InferenceOp> {
    expand(MlNode(Arc::new(kernel)))
}

impl Expansion for MlNode {
    fn name(&self) -> StaticName {
        self.0.name().into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.0.n_outputs())
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, self.0.n_inputs())?;
        check_output_arity(outputs, self.0.n_outputs())?;
        let kernel = self.0.clone();
        s.given_all(
            inputs.iter().map(|i| &i.datum_type),
            move |s, types: Vec<DatumType>| {
                for (o, dt) in outputs.iter().zip(kernel.output_types(&types)?) {
                    s.equals(&o.datum_type, dt)?;
                }
                Ok(())
            },
        )?;
        let kernel = self.0.clone();
        s.given_all(
            inputs.iter().map(|i| &i.shape),
            move |s, shapes: Vec<TVec<TDim>>| {
                for (o, shape) in outputs.iter().zip(kernel.output_shapes(&shapes)?) {
                    s.equals(&o.shape, shape)?;
                }
                Ok(())
            },
        )
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, MlOp(self.0.clone()), inputs)
    }
}

/// The node in the typed (and optimised) model.
#[derive(Debug, Clone)]
pub(crate) struct MlOp(pub Arc<dyn Kernel>);

impl PartialEq for MlOp {
    fn eq(&self, other: &Self) -> bool {
        // Two nodes are the same op only if they share the kernel: that keeps tract from
        // merging distinct nodes whose attributes we do not compare.
        std::ptr::addr_eq(Arc::as_ptr(&self.0), Arc::as_ptr(&other.0))
    }
}

impl Eq for MlOp {}

impl Op for MlOp {
    fn name(&self) -> StaticName {
        self.0.name().into()
    }

    op_as_typed_op!();
}

impl EvalOp for MlOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.0.eval(inputs)
    }
}

impl TypedOp for MlOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let types: Vec<DatumType> = inputs.iter().map(|f| f.datum_type).collect();
        let shapes: Vec<TVec<TDim>> = inputs.iter().map(|f| f.shape.to_tvec()).collect();
        let types = self.0.output_types(&types)?;
        let shapes = self.0.output_shapes(&shapes)?;
        Ok(types
            .into_iter()
            .zip(shapes)
            .map(|(dt, shape)| TypedFact::dt_shape(dt, shape))
            .collect())
    }

    as_op!();
}

/// A 2-D view of a numeric input as f32 rows: `[N, C]`, or `[C]` as one row (what the ONNX-ML
/// operators accept). Integer and double inputs are converted, as onnxruntime does.
pub(crate) struct Rows<'a> {
    data: std::borrow::Cow<'a, Tensor>,
    pub n: usize,
    pub c: usize,
}

impl<'a> Rows<'a> {
    pub fn new(t: &'a Tensor, op: &str) -> TractResult<Self> {
        let (n, c) = match t.shape() {
            [c] => (1, *c),
            [n, c] => (*n, *c),
            other => bail!("{op}: input must be [N, C] or [C], got shape {other:?}"),
        };
        let data = if t.datum_type() == f32::datum_type() {
            std::borrow::Cow::Borrowed(t)
        } else {
            t.cast_to::<f32>()?
        };
        Ok(Rows { data, n, c })
    }

    pub fn as_slice(&self) -> TractResult<&[f32]> {
        self.data.try_as_plain_ram()?.as_slice::<f32>()
    }
}

/// `[N, C]` (or `[C]` as `[1, C]`) → the batch dimension, for output shapes.
pub(crate) fn batch_dim(op: &str, shape: &[TDim]) -> TractResult<TDim> {
    match shape {
        [_] => Ok(1.into()),
        [n, _] => Ok(n.clone()),
        other => bail!("{op}: input must be [N, C] or [C], got shape {other:?}"),
    }
}

pub(crate) fn f32_tensor(shape: &[usize], data: Vec<f32>) -> TractResult<TValue> {
    Ok(tract_ndarray::ArrayD::from_shape_vec(shape, data)?
        .into_tensor()
        .into_tvalue())
}

pub(crate) fn i64_tensor(shape: &[usize], data: Vec<i64>) -> TractResult<TValue> {
    Ok(tract_ndarray::ArrayD::from_shape_vec(shape, data)?
        .into_tensor()
        .into_tvalue())
}

/// onnxruntime's logistic, written to be stable for large |x|.
pub(crate) fn logistic(x: f32) -> f32 {
    let v = 1.0 / (1.0 + (-x.abs()).exp());
    if x < 0.0 { 1.0 - v } else { v }
}

pub(crate) fn softmax(v: &mut [f32]) {
    let max = v.iter().copied().fold(-f32::MAX, f32::max);
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    for x in v.iter_mut() {
        *x /= sum;
    }
}

/// Softmax that leaves (near-)zero scores at zero weight — onnxruntime's SOFTMAX_ZERO.
pub(crate) fn softmax_zero(v: &mut [f32]) {
    let max = v.iter().copied().fold(-f32::MAX, f32::max);
    let exp_neg_max = (-max).exp();
    let mut sum = 0.0;
    for x in v.iter_mut() {
        if *x > 0.000_000_1 || *x < -0.000_000_1 {
            *x = (*x - max).exp();
            sum += *x;
        } else {
            *x *= exp_neg_max;
        }
    }
    for x in v.iter_mut() {
        *x /= sum;
    }
}

/// The score transforms of the ONNX-ML linear and tree operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PostTransform {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
}

impl PostTransform {
    pub fn parse(op: &str, node: &str, s: Option<&str>) -> TractResult<Self> {
        match s.unwrap_or("NONE") {
            "NONE" => Ok(Self::None),
            "LOGISTIC" => Ok(Self::Logistic),
            "SOFTMAX" => Ok(Self::Softmax),
            "SOFTMAX_ZERO" => Ok(Self::SoftmaxZero),
            other => bail!(
                "{op} node {node:?}: post_transform {other} is not supported (NONE, LOGISTIC, \
                 SOFTMAX and SOFTMAX_ZERO are)"
            ),
        }
    }

    /// Applies the transform to one row of two or more scores.
    pub fn apply(self, row: &mut [f32]) {
        match self {
            Self::None => {}
            Self::Logistic => row.iter_mut().for_each(|x| *x = logistic(*x)),
            Self::Softmax => softmax(row),
            Self::SoftmaxZero => softmax_zero(row),
        }
    }
}
