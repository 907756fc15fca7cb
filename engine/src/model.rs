//! Loading ONNX models with tract, running them, and checking their smoke tests.

use std::path::Path;
use std::sync::Arc;

use edgefleet_common::{ModelManifest, Tensor, TensorData, TensorSpec};
use tract_onnx::prelude::*;

use crate::error::{EngineError, EngineResult};

/// A model ready to serve: its verified manifest and an optimised tract plan. It knows nothing
/// of telemetry: the `active` module pairs it with its window when it is put in service, so a
/// model can be loaded and smoke-tested without recording anything.
pub struct LoadedModel {
    pub manifest: ModelManifest,
    plan: Arc<TypedRunnableModel>,
    /// For each tract input position, the index of the manifest input feeding it.
    input_order: Vec<usize>,
    /// For each tract output position, the manifest output name.
    output_names: Vec<String>,
    /// Moving average of the inference time, nanoseconds: decides where inference runs.
    avg_ns: std::sync::atomic::AtomicU64,
    /// Idle run states of `plan`, reused across requests: a fresh state per request costs one
    /// allocation per node plus the per-op scratch. Feed-forward ONNX models keep nothing
    /// between runs (`run` resets the turn), and a state whose run failed is dropped, never
    /// returned here.
    idle: std::sync::Mutex<Vec<TypedSimpleState>>,
}

/// Idle run states kept per model: more than the worker threads that can infer at once would
/// only hold memory.
const MAX_IDLE_STATES: usize = 8;

/// Inferences slower than this leave the async worker for the blocking pool.
const INLINE_LIMIT_NS: u64 = 200_000;

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LoadedModel({} v{})",
            self.manifest.name, self.manifest.version
        )
    }
}

fn model_err(m: &ModelManifest, message: impl std::fmt::Display) -> EngineError {
    EngineError::Model {
        name: m.name.clone(),
        version: m.version,
        message: message.to_string(),
    }
}

impl LoadedModel {
    /// Parses and optimises the ONNX file, and checks that its inputs and outputs are the ones
    /// the manifest declares (a mismatch means a mislabelled artifact: refuse it).
    pub fn load(manifest: ModelManifest, path: &Path) -> EngineResult<Self> {
        let mut file = std::fs::File::open(path)?;
        let mut model = parse(&mut file).map_err(|e| model_err(&manifest, e))?;
        let input_names: Vec<String> = model
            .input_outlets()
            .map_err(|e| model_err(&manifest, e))?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let output_names = output_labels(&model).map_err(|e| model_err(&manifest, e))?;
        let mut input_order = Vec::with_capacity(input_names.len());
        for n in &input_names {
            let idx = manifest
                .inputs
                .iter()
                .position(|s| &s.name == n)
                .ok_or_else(|| {
                    model_err(
                        &manifest,
                        format!("the model has input {n:?}, which the manifest does not declare"),
                    )
                })?;
            input_order.push(idx);
        }
        if input_names.len() != manifest.inputs.len() {
            return Err(model_err(
                &manifest,
                format!(
                    "the model has inputs {input_names:?}, the manifest declares {:?}",
                    manifest.inputs.iter().map(|s| &s.name).collect::<Vec<_>>()
                ),
            ));
        }
        for (pos, &idx) in input_order.iter().enumerate() {
            close_input_fact(&mut model, pos, &manifest.inputs[idx])
                .map_err(|e| model_err(&manifest, e))?;
        }
        for s in &manifest.outputs {
            if !output_names.contains(&s.name) {
                return Err(model_err(
                    &manifest,
                    format!(
                        "the manifest declares output {:?}; the model has {output_names:?}",
                        s.name
                    ),
                ));
            }
        }
        let typed = model
            .into_optimized()
            .map_err(|e| model_err(&manifest, format!("cannot optimise: {e:#}")))?;
        check_schema(&manifest, &typed, &input_order, &output_names)
            .map_err(|e| model_err(&manifest, e))?;
        let plan = typed
            .into_runnable()
            .map_err(|e| model_err(&manifest, format!("cannot optimise: {e:#}")))?;
        Ok(Self {
            manifest,
            plan,
            input_order,
            output_names,
            avg_ns: Default::default(),
            idle: Default::default(),
        })
    }

    /// Runs one inference. Inputs are checked against the manifest (name, datatype, shape);
    /// `wanted` selects outputs (all when empty).
    pub fn infer(&self, inputs: &[Tensor], wanted: &[String]) -> Result<Vec<Tensor>, String> {
        let mut values: TVec<TValue> = TVec::with_capacity(self.input_order.len());
        for &idx in &self.input_order {
            let spec = &self.manifest.inputs[idx];
            let t = inputs.iter().find(|t| t.name == spec.name).ok_or_else(|| {
                format!(
                    "missing input {:?} ({} {:?})",
                    spec.name, spec.datatype, spec.shape
                )
            })?;
            if t.data.datatype() != spec.datatype {
                return Err(format!(
                    "input {:?} must be {}, got {}",
                    spec.name,
                    spec.datatype,
                    t.data.datatype()
                ));
            }
            let shape_ok = t.shape.len() == spec.shape.len()
                && t.shape
                    .iter()
                    .zip(&spec.shape)
                    .all(|(&got, &want)| want == -1 || got == want as u64);
            if !shape_ok || t.shape.contains(&0) {
                return Err(format!(
                    "input {:?} must have shape {:?} (-1: any size ≥ 1), got {:?}",
                    spec.name, spec.shape, t.shape
                ));
            }
            t.validate().map_err(|e| e.to_string())?;
            values.push(
                to_tract(t)
                    .map_err(|e| format!("input {:?}: {e}", spec.name))?
                    .into(),
            );
        }
        for t in inputs {
            if !self.manifest.inputs.iter().any(|s| s.name == t.name) {
                return Err(format!(
                    "unknown input {:?}; the model's inputs are {:?}",
                    t.name,
                    self.manifest
                        .inputs
                        .iter()
                        .map(|s| &s.name)
                        .collect::<Vec<_>>()
                ));
            }
        }
        self.check_outputs(wanted)?;
        let outputs = self.run_plan(values)?;
        let mut result = Vec::new();
        for (value, name) in outputs.iter().zip(&self.output_names) {
            let declared = self.manifest.outputs.iter().any(|s| &s.name == name);
            if !declared || (!wanted.is_empty() && !wanted.contains(name)) {
                continue;
            }
            result.push(from_tract(name, value).map_err(|e| format!("output {name:?}: {e}"))?);
        }
        Ok(result)
    }

    /// Every name in `wanted` must be a declared output.
    pub fn check_outputs(&self, wanted: &[impl AsRef<str>]) -> Result<(), String> {
        match wanted
            .iter()
            .map(AsRef::as_ref)
            .find(|w| !self.manifest.outputs.iter().any(|s| s.name == *w))
        {
            Some(w) => Err(format!(
                "unknown output {w:?}; the model's outputs are {:?}",
                self.manifest
                    .outputs
                    .iter()
                    .map(|s| &s.name)
                    .collect::<Vec<_>>()
            )),
            None => Ok(()),
        }
    }

    /// Runs the plan on a pooled state (a new one when none is idle).
    fn run_plan(&self, values: TVec<TValue>) -> Result<TVec<TValue>, String> {
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut state = match pooled {
            Some(state) => state,
            None => self
                .plan
                .spawn()
                .map_err(|e| format!("inference failed: {e:#}"))?,
        };
        let outputs = state
            .run(values)
            .map_err(|e| format!("inference failed: {e:#}"))?;
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE_STATES
        {
            idle.push(state);
        }
        Ok(outputs)
    }

    /// Runs an inference from async code: inline when the model is fast (a hand-off would cost
    /// more than the inference), in `block_in_place` when it is slow, so a big model cannot
    /// stall the runtime's other tasks.
    pub fn infer_adaptive(
        &self,
        inputs: &[Tensor],
        wanted: &[String],
    ) -> Result<Vec<Tensor>, String> {
        use std::sync::atomic::Ordering;
        let slow = self.avg_ns.load(Ordering::Relaxed) > INLINE_LIMIT_NS;
        let multi = matches!(
            tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()),
            Ok(tokio::runtime::RuntimeFlavor::MultiThread)
        );
        let start = std::time::Instant::now();
        let result = if slow && multi {
            tokio::task::block_in_place(|| self.infer(inputs, wanted))
        } else {
            self.infer(inputs, wanted)
        };
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let old = self.avg_ns.load(Ordering::Relaxed);
        // EWMA with weight 1/8; races between requests only blur the average.
        self.avg_ns.store(old - old / 8 + ns / 8, Ordering::Relaxed);
        result
    }

    /// Runs every smoke test of the manifest; the first mismatch is the error.
    /// Runs the manifest's smoke tests; a failure is [`EngineError::SmokeTest`], so the agent
    /// can report it as such.
    pub fn smoke_test(&self) -> EngineResult<()> {
        self.run_smoke_tests().map_err(|e| match e {
            EngineError::Model {
                name,
                version,
                message,
            } => EngineError::SmokeTest {
                name,
                version,
                message,
            },
            other => other,
        })
    }

    fn run_smoke_tests(&self) -> EngineResult<()> {
        for (i, test) in self.manifest.smoke_tests.iter().enumerate() {
            let got = self
                .infer(&test.inputs, &[])
                .map_err(|e| model_err(&self.manifest, format!("smoke test {i}: {e}")))?;
            for want in &test.expected {
                let g = got.iter().find(|t| t.name == want.name).ok_or_else(|| {
                    model_err(
                        &self.manifest,
                        format!("smoke test {i}: no output {:?}", want.name),
                    )
                })?;
                if g.shape != want.shape {
                    return Err(model_err(
                        &self.manifest,
                        format!(
                            "smoke test {i}: output {:?} has shape {:?}, expected {:?}",
                            want.name, g.shape, want.shape
                        ),
                    ));
                }
                for (j, (a, b)) in g.data.to_f64().iter().zip(want.data.to_f64()).enumerate() {
                    let within = (a - b).abs() <= test.tolerance; // false for NaN
                    if !within {
                        return Err(model_err(
                            &self.manifest,
                            format!(
                                "smoke test {i} failed: output {:?}[{j}] = {a}, expected {b} ± {}",
                                want.name, test.tolerance
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads an ONNX file the way [`LoadedModel::load`] does and reports its inputs and outputs as
/// a manifest should declare them (-1 for a dimension of any size): the schema for
/// `edgefleet sign`'s spec, from the loader that will serve the model.
pub fn describe(path: &Path) -> Result<(Vec<TensorSpec>, Vec<TensorSpec>), String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut model = parse(&mut file)?;
    let to_i64 = |d: &TDim| d.to_i64().unwrap_or(-1);
    let mut inputs = Vec::new();
    let outlets = model.input_outlets().map_err(|e| e.to_string())?.to_vec();
    for (pos, outlet) in outlets.iter().enumerate() {
        let name = model.node(outlet.node).name.clone();
        let fact = model.input_fact(pos).map_err(|e| e.to_string())?;
        let datatype = tract_onnx::tract_hir::infer::Factoid::concretize(&fact.datum_type)
            .and_then(datatype_of)
            .ok_or_else(|| format!("input {name:?}: datatype not declared or not served"))?;
        if fact.shape.is_open() {
            return Err(format!(
                "input {name:?}: the model does not declare its rank"
            ));
        }
        let shape = fact
            .shape
            .dims()
            .map(|d| {
                tract_onnx::tract_hir::infer::Factoid::concretize(d).map_or(-1, |d| to_i64(&d))
            })
            .collect();
        let spec = TensorSpec {
            name,
            datatype,
            shape,
            feature_names: vec![],
        };
        close_input_fact(&mut model, pos, &spec)?;
        inputs.push(spec);
    }
    let names = output_labels(&model)?;
    let typed = model
        .into_optimized()
        .map_err(|e| format!("cannot optimise: {e:#}"))?;
    let mut outputs = Vec::new();
    for (outlet, name) in typed
        .output_outlets()
        .map_err(|e| e.to_string())?
        .iter()
        .zip(names)
    {
        let fact = typed.outlet_fact(*outlet).map_err(|e| e.to_string())?;
        let datatype = datatype_of(fact.datum_type).ok_or_else(|| {
            format!(
                "output {name:?}: datatype {:?} is not served",
                fact.datum_type
            )
        })?;
        outputs.push(TensorSpec {
            name,
            datatype,
            shape: fact.shape.iter().map(to_i64).collect(),
            feature_names: vec![],
        });
    }
    Ok((inputs, outputs))
}

/// Parses an ONNX file with our ONNX-ML operators, refusing any operator nobody implements
/// before tract builds the graph.
fn parse(file: &mut std::fs::File) -> Result<InferenceModel, String> {
    let onnx = crate::onnx_ml::onnx();
    let proto = onnx
        .proto_model_for_read(file)
        .map_err(|e| format!("not an ONNX model: {e:#}"))?;
    crate::onnx_ml::check_supported(&onnx, &proto)?;
    onnx.model_for_proto_model(&proto)
        .map_err(|e| format!("not a loadable ONNX model: {e:#}"))
}

/// The model's output names, in tract's output order.
fn output_labels(model: &InferenceModel) -> Result<Vec<String>, String> {
    Ok(model
        .output_outlets()
        .map_err(|e| e.to_string())?
        .iter()
        .map(|o| {
            model
                .outlet_label(*o)
                .map(str::to_owned)
                .unwrap_or_else(|| model.node(o.node).name.clone())
        })
        .collect())
}

/// Fills in what the model leaves open about an input from the manifest: exporters often
/// declare `[None, 8]` (an unnamed batch dimension), which tract cannot plan for. Unknown
/// dimensions become the manifest's size, or a symbol where the manifest says -1; what the
/// model does declare is kept (and compared with the manifest after optimisation).
fn close_input_fact(
    model: &mut InferenceModel,
    pos: usize,
    spec: &TensorSpec,
) -> Result<(), String> {
    use tract_onnx::tract_hir::infer::{Factoid, GenericFactoid, ShapeFactoid};
    let fact = model.input_fact(pos).map_err(|e| e.to_string())?.clone();
    let open = fact.shape.is_open();
    let declared: Vec<Option<TDim>> = fact.shape.dims().map(|d| d.concretize()).collect();
    if !open && declared.len() != spec.shape.len() {
        return Err(format!(
            "the manifest declares input {:?} with {} dimensions; the model has {}",
            spec.name,
            spec.shape.len(),
            declared.len()
        ));
    }
    let dims = spec
        .shape
        .iter()
        .enumerate()
        .map(|(i, &want)| {
            let known = declared.get(i).cloned().flatten();
            GenericFactoid::Only(known.unwrap_or_else(|| {
                if want >= 0 {
                    TDim::from(want)
                } else if i == 0 {
                    model.sym("N").into()
                } else {
                    model.sym(&format!("d{pos}_{i}")).into()
                }
            }))
        })
        .collect();
    let dt = fact
        .datum_type
        .concretize()
        .or_else(|| datum_of(spec.datatype))
        .ok_or_else(|| {
            format!(
                "input {:?}: datatype {} is not served",
                spec.name, spec.datatype
            )
        })?;
    model
        .set_input_fact(pos, InferenceFact::dt_shape(dt, ShapeFactoid::closed(dims)))
        .map_err(|e| e.to_string())
}

fn datum_of(dt: edgefleet_common::DataType) -> Option<DatumType> {
    use edgefleet_common::DataType;
    Some(match dt {
        DataType::Bool => DatumType::Bool,
        DataType::Int32 => DatumType::I32,
        DataType::Int64 => DatumType::I64,
        DataType::Fp32 => DatumType::F32,
        DataType::Fp64 => DatumType::F64,
        _ => return None,
    })
}

/// The manifest's datatypes and shapes must be the model's: a manifest saying FP32 where the
/// model answers INT64 would make every client misread the answers.
fn check_schema(
    manifest: &ModelManifest,
    model: &TypedModel,
    input_order: &[usize],
    output_names: &[String],
) -> Result<(), String> {
    let mut pairs = Vec::new();
    for (pos, &idx) in input_order.iter().enumerate() {
        let outlet = model.input_outlets().map_err(|e| e.to_string())?[pos];
        pairs.push(("input", &manifest.inputs[idx], outlet));
    }
    let outlets = model.output_outlets().map_err(|e| e.to_string())?;
    for spec in &manifest.outputs {
        if let Some(pos) = output_names.iter().position(|n| n == &spec.name) {
            pairs.push(("output", spec, outlets[pos]));
        }
    }
    for (kind, spec, outlet) in pairs {
        let fact = model.outlet_fact(outlet).map_err(|e| e.to_string())?;
        let model_dt = datatype_of(fact.datum_type);
        let shape: Vec<String> = fact.shape.iter().map(|d| d.to_string()).collect();
        let shape_ok = fact.rank() == spec.shape.len()
            && fact
                .shape
                .iter()
                .zip(&spec.shape)
                .all(|(d, &want)| want == -1 || d.to_i64().ok().is_none_or(|d| d == want));
        if model_dt != Some(spec.datatype) || !shape_ok {
            return Err(format!(
                "the manifest declares {kind} {:?} as {} {:?}; the model has {} [{}] (-1 in the \
                 manifest matches any size)",
                spec.name,
                spec.datatype,
                spec.shape,
                model_dt.map_or_else(|| format!("{:?}", fact.datum_type), |d| d.to_string()),
                shape.join(", ")
            ));
        }
    }
    Ok(())
}

fn datatype_of(dt: DatumType) -> Option<edgefleet_common::DataType> {
    use edgefleet_common::DataType;
    Some(match dt {
        DatumType::Bool => DataType::Bool,
        DatumType::I32 => DataType::Int32,
        // tract types integer results of shape arithmetic (and some casts) as TDim; they
        // are served as INT64.
        DatumType::I64 | DatumType::TDim => DataType::Int64,
        DatumType::F32 => DataType::Fp32,
        DatumType::F64 => DataType::Fp64,
        _ => return None,
    })
}

fn shape_usize(shape: &[u64]) -> Result<Vec<usize>, String> {
    shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| "dimension too large".to_owned()))
        .collect()
}

pub fn to_tract(t: &Tensor) -> Result<tract_onnx::prelude::Tensor, String> {
    let shape = shape_usize(&t.shape)?;
    let r = match &t.data {
        TensorData::Bool(v) => tract_onnx::prelude::Tensor::from_shape(&shape, v),
        TensorData::Int32(v) => tract_onnx::prelude::Tensor::from_shape(&shape, v),
        TensorData::Int64(v) => tract_onnx::prelude::Tensor::from_shape(&shape, v),
        TensorData::Fp32(v) => tract_onnx::prelude::Tensor::from_shape(&shape, v),
        TensorData::Fp64(v) => tract_onnx::prelude::Tensor::from_shape(&shape, v),
    };
    r.map_err(|e| e.to_string())
}

fn collect<D: Datum + Copy>(t: &tract_onnx::prelude::Tensor) -> Result<Vec<D>, String> {
    Ok(t.to_plain_array_view::<D>()
        .map_err(|e| e.to_string())?
        .iter()
        .copied()
        .collect())
}

pub fn from_tract(name: &str, t: &tract_onnx::prelude::Tensor) -> Result<Tensor, String> {
    let data = match t.datum_type() {
        DatumType::Bool => TensorData::Bool(collect(t)?),
        DatumType::I32 => TensorData::Int32(collect(t)?),
        DatumType::I64 => TensorData::Int64(collect(t)?),
        DatumType::TDim => {
            TensorData::Int64(collect(&*t.cast_to::<i64>().map_err(|e| e.to_string())?)?)
        }
        DatumType::F32 => TensorData::Fp32(collect(t)?),
        DatumType::F64 => TensorData::Fp64(collect(t)?),
        other => return Err(format!("datatype {other:?} is not served yet")),
    };
    Ok(Tensor {
        name: name.to_owned(),
        shape: t.shape().iter().map(|&d| d as u64).collect(),
        data,
    })
}
