//! The Open Inference Protocol v2 (KServe v2 REST) server over the active models.
//!
//! The set of active models is one immutable map behind an `ArcSwap`: a request takes a
//! snapshot at its start and keeps it to the end, so a swap mid-request is invisible to it —
//! every request sees the old or the new model, never an error or a mix.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use edgefleet_common::{DataType, Tensor, TensorData, TensorSpec};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::LoadedModel;

/// Largest inference request body.
pub const MAX_INFER_BODY: usize = 8 * 1024 * 1024;
/// Largest element count of one input tensor.
pub const MAX_ELEMENTS: usize = 1 << 20;

/// The models being served.
#[derive(Default)]
pub struct Registry {
    models: ArcSwap<HashMap<String, Arc<LoadedModel>>>,
    ready: AtomicBool,
    /// Windows of models swapped out since telemetry last closed a window: their requests
    /// are reported with the next record, not lost with the old model.
    retired: std::sync::Mutex<Vec<crate::telemetry::RetiredWindow>>,
    /// Telemetry, for `/metrics` (set once the agent has opened its outbox). Weak: telemetry
    /// holds the registry, and the outbox must close when the agent stops.
    pub telemetry: std::sync::OnceLock<std::sync::Weak<crate::telemetry::Telemetry>>,
}

impl Registry {
    pub fn get(&self, name: &str) -> Option<Arc<LoadedModel>> {
        self.models.load().get(name).cloned()
    }

    pub fn snapshot(&self) -> Arc<HashMap<String, Arc<LoadedModel>>> {
        self.models.load_full()
    }

    /// Atomically replaces (or adds) one model. The replaced model's window is closed and
    /// kept for the next telemetry record (a request still running on it records into a
    /// window nobody reads: at most the requests in flight at the swap).
    pub fn swap_in(&self, model: Arc<LoadedModel>) {
        let previous = self.models.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.insert(model.manifest.name.clone(), model.clone());
            next
        });
        if let Some(old) = previous.get(&model.manifest.name)
            && !Arc::ptr_eq(old, &model)
            && let Some(window) = old.window.close(crate::now())
            && (window.requests > 0 || window.errors > 0)
            && let Ok(mut retired) = self.retired.lock()
        {
            retired.push(crate::telemetry::RetiredWindow {
                model: old.manifest.name.clone(),
                version: old.manifest.version,
                window,
            });
        }
    }

    /// The windows of models swapped out since the last call.
    pub fn take_retired(&self) -> Vec<crate::telemetry::RetiredWindow> {
        self.retired
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// `GET /metrics`: Prometheus (OpenMetrics) text for the node's scraper.
async fn metrics(State(registry): State<Arc<Registry>>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match crate::telemetry::exposition(&registry) {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(server_ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_metadata_v),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready_v),
        )
        .route("/metrics", get(metrics))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_v))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint; see /v2 and /v2/models/{name}".into(),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_INFER_BODY))
        .with_state(registry)
}

/// A protocol error: the status and a message that says what was expected. Rendered as the
/// protocol's `{"error": "..."}`.
pub struct OipError(StatusCode, String);

impl IntoResponse for OipError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

fn error(status: StatusCode, message: String) -> OipError {
    OipError(status, message)
}

fn bad_request(message: String) -> OipError {
    OipError(StatusCode::BAD_REQUEST, message)
}

async fn server_metadata() -> axum::Json<Value> {
    axum::Json(
        json!({"name": "edgefleet-agent", "version": env!("CARGO_PKG_VERSION"), "extensions": []}),
    )
}

async fn server_ready(State(r): State<Arc<Registry>>) -> StatusCode {
    if r.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn find(r: &Registry, name: &str, version: Option<&str>) -> Result<Arc<LoadedModel>, OipError> {
    let Some(m) = r.get(name) else {
        let known: Vec<String> = r.snapshot().keys().cloned().collect();
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("model {name:?} is not loaded; loaded models: {known:?}"),
        ));
    };
    if let Some(v) = version
        && v != m.manifest.version.to_string()
    {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!(
                "version {v:?} of model {name:?} is not loaded; the loaded version is {}",
                m.manifest.version
            ),
        ));
    }
    Ok(m)
}

fn spec_json(s: &TensorSpec) -> Value {
    json!({"name": s.name, "datatype": s.datatype.as_str(), "shape": s.shape})
}

fn metadata(r: &Registry, name: &str, version: Option<&str>) -> Result<Response, OipError> {
    let m = find(r, name, version)?;
    Ok(axum::Json(json!({
            "name": m.manifest.name,
            "versions": [m.manifest.version.to_string()],
            "platform": "onnx",
            "inputs": m.manifest.inputs.iter().map(spec_json).collect::<Vec<_>>(),
            "outputs": m.manifest.outputs.iter().map(spec_json).collect::<Vec<_>>(),
    }))
    .into_response())
}

async fn model_metadata(
    State(r): State<Arc<Registry>>,
    Path(name): Path<String>,
) -> Result<Response, OipError> {
    metadata(&r, &name, None)
}

async fn model_metadata_v(
    State(r): State<Arc<Registry>>,
    Path((name, v)): Path<(String, String)>,
) -> Result<Response, OipError> {
    metadata(&r, &name, Some(&v))
}

async fn model_ready(
    State(r): State<Arc<Registry>>,
    Path(name): Path<String>,
) -> Result<StatusCode, OipError> {
    find(&r, &name, None).map(|_| StatusCode::OK)
}

async fn model_ready_v(
    State(r): State<Arc<Registry>>,
    Path((name, v)): Path<(String, String)>,
) -> Result<StatusCode, OipError> {
    find(&r, &name, Some(&v)).map(|_| StatusCode::OK)
}

#[derive(Deserialize)]
struct InferRequest {
    id: Option<String>,
    #[allow(dead_code)]
    parameters: Option<Value>,
    inputs: Vec<InputTensor>,
    outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Deserialize)]
struct InputTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    /// Kept raw: flat arrays (the common case) are parsed straight into typed vectors.
    data: Box<serde_json::value::RawValue>,
    #[allow(dead_code)]
    parameters: Option<Value>,
}

#[derive(Deserialize)]
struct RequestedOutput {
    name: String,
}

/// Flattens nested JSON arrays (row-major) into `out`, bounded by `MAX_ELEMENTS`.
fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) -> Result<(), String> {
    match v {
        Value::Array(items) => {
            for i in items {
                flatten(i, out)?;
            }
        }
        other => {
            if out.len() >= MAX_ELEMENTS {
                return Err(format!("more than {MAX_ELEMENTS} elements"));
            }
            out.push(other);
        }
    }
    Ok(())
}

/// Parses a flat JSON array straight into `Vec<T>`; `None` if it is nested or not all `T`.
fn parse_flat<T: serde::de::DeserializeOwned>(raw: &str) -> Option<Vec<T>> {
    serde_json::from_str(raw).ok()
}

fn parse_input(t: &InputTensor) -> Result<Tensor, String> {
    let datatype = DataType::parse(&t.datatype).ok_or_else(|| {
        format!(
            "input {:?}: unknown datatype {:?} (use FP32, FP64, INT32, INT64 or BOOL)",
            t.name, t.datatype
        )
    })?;
    let shape: Vec<u64> = t
        .shape
        .iter()
        .map(|&d| {
            u64::try_from(d).map_err(|_| {
                format!(
                    "input {:?}: negative dimension in shape {:?}",
                    t.name, t.shape
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let raw = t.data.get();
    if raw.len() > MAX_INFER_BODY {
        return Err(format!("input {:?}: data too large", t.name));
    }
    let fast = match datatype {
        DataType::Fp32 => parse_flat::<f32>(raw).map(TensorData::Fp32),
        DataType::Fp64 => parse_flat::<f64>(raw).map(TensorData::Fp64),
        DataType::Int64 => parse_flat::<i64>(raw).map(TensorData::Int64),
        DataType::Int32 => parse_flat::<i32>(raw).map(TensorData::Int32),
        DataType::Bool => parse_flat::<bool>(raw).map(TensorData::Bool),
        _ => None,
    };
    let data = match fast {
        Some(d) if d.len() <= MAX_ELEMENTS => d,
        Some(_) => {
            return Err(format!(
                "input {:?}: more than {MAX_ELEMENTS} elements",
                t.name
            ));
        }
        None => parse_nested(t, datatype, raw)?,
    };
    let tensor = Tensor {
        name: t.name.clone(),
        shape,
        data,
    };
    tensor.validate().map_err(|e| e.to_string())?;
    Ok(tensor)
}

/// The general path: nested arrays (row-major) and precise per-element errors.
fn parse_nested(t: &InputTensor, datatype: DataType, raw: &str) -> Result<TensorData, String> {
    let value: Value =
        serde_json::from_str(raw).map_err(|e| format!("input {:?}: bad data: {e}", t.name))?;
    let mut flat = Vec::new();
    flatten(&value, &mut flat).map_err(|e| format!("input {:?}: {e}", t.name))?;
    let bad = |i: usize| {
        format!(
            "input {:?}: element {i} ({}) is not a valid {}",
            t.name, flat[i], t.datatype
        )
    };
    let each = |f: &dyn Fn(&Value) -> bool| -> Result<(), String> {
        match flat.iter().position(|v| !f(v)) {
            Some(i) => Err(bad(i)),
            None => Ok(()),
        }
    };
    Ok(match datatype {
        DataType::Fp32 => {
            each(&|v| v.is_number())?;
            TensorData::Fp32(
                flat.iter()
                    .filter_map(|v| v.as_f64())
                    .map(|x| x as f32)
                    .collect(),
            )
        }
        DataType::Fp64 => {
            each(&|v| v.is_number())?;
            TensorData::Fp64(flat.iter().filter_map(|v| v.as_f64()).collect())
        }
        DataType::Int64 => {
            each(&|v| v.as_i64().is_some())?;
            TensorData::Int64(flat.iter().filter_map(|v| v.as_i64()).collect())
        }
        DataType::Int32 => {
            each(&|v| v.as_i64().and_then(|x| i32::try_from(x).ok()).is_some())?;
            TensorData::Int32(
                flat.iter()
                    .filter_map(|v| v.as_i64().and_then(|x| i32::try_from(x).ok()))
                    .collect(),
            )
        }
        DataType::Bool => {
            each(&|v| v.is_boolean())?;
            TensorData::Bool(flat.iter().filter_map(|v| v.as_bool()).collect())
        }
        other => {
            return Err(format!(
                "input {:?}: datatype {other} is not supported by this agent",
                t.name
            ));
        }
    })
}

#[derive(Serialize)]
struct OutputTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [u64],
    data: OutputData<'a>,
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

#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    outputs: Vec<OutputTensor<'a>>,
}

fn output_tensor(t: &Tensor) -> OutputTensor<'_> {
    let data = match &t.data {
        TensorData::Bool(v) => OutputData::Bool(v),
        TensorData::Int32(v) => OutputData::Int32(v),
        TensorData::Int64(v) => OutputData::Int64(v),
        TensorData::Fp32(v) => OutputData::Fp32(v),
        TensorData::Fp64(v) => OutputData::Fp64(v),
    };
    OutputTensor {
        name: &t.name,
        datatype: t.data.datatype().as_str(),
        shape: &t.shape,
        data,
    }
}

async fn infer(
    State(r): State<Arc<Registry>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, OipError> {
    run_infer(&r, &name, None, &body)
}

async fn infer_v(
    State(r): State<Arc<Registry>>,
    Path((name, v)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, OipError> {
    run_infer(&r, &name, Some(&v), &body)
}

fn run_infer(
    r: &Registry,
    name: &str,
    version: Option<&str>,
    body: &[u8],
) -> Result<Response, OipError> {
    let model = find(r, name, version)?;
    let result = infer_recorded(&model, body);
    if result.is_err() {
        // Every request the model refused counts in its window's error rate.
        model.window.record_error();
    }
    result
}

/// Parses, infers and records one request in the model's window.
fn infer_recorded(model: &LoadedModel, body: &[u8]) -> Result<Response, OipError> {
    let req: InferRequest = serde_json::from_slice(body)
        .map_err(|e| bad_request(format!("malformed inference request: {e}")))?;
    let inputs = req
        .inputs
        .iter()
        .map(parse_input)
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad_request)?;
    let wanted: Vec<String> = req
        .outputs
        .unwrap_or_default()
        .into_iter()
        .map(|o| o.name)
        .collect();
    model.check_outputs(&wanted).map_err(bad_request)?;
    // Every output is computed (and profiled); `outputs` only selects what is sent back.
    let start = std::time::Instant::now();
    let mut outputs = model.infer_adaptive(&inputs, &[]).map_err(bad_request)?;
    model
        .window
        .record(&inputs, &outputs, start.elapsed().as_secs_f64() * 1e6);
    if !wanted.is_empty() {
        outputs.retain(|o| wanted.contains(&o.name));
    }
    let resp = InferResponse {
        model_name: &model.manifest.name,
        model_version: model.manifest.version.to_string(),
        id: req.id,
        outputs: outputs.iter().map(output_tensor).collect(),
    };
    let body = serde_json::to_vec(&resp).map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode: {e}"),
        )
    })?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}
