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
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use edgefleet_common::TensorSpec;
use serde_json::{Value, json};

use crate::model::LoadedModel;

pub mod request;
pub mod response;

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
        json!({"name": "edgefleet-agent", "version": env!("CARGO_PKG_VERSION"), "extensions": ["binary_tensor_data"]}),
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

async fn infer(
    State(r): State<Arc<Registry>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OipError> {
    run_infer(&r, &name, None, &headers, &body)
}

async fn infer_v(
    State(r): State<Arc<Registry>>,
    Path((name, v)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OipError> {
    run_infer(&r, &name, Some(&v), &headers, &body)
}

fn run_infer(
    r: &Registry,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, OipError> {
    let model = find(r, name, version)?;
    let result = infer_recorded(&model, headers, body);
    if result.is_err() {
        // Every request the model refused counts in its window's error rate.
        model.window.record_error();
    }
    result
}

/// Parses, infers and records one request in the model's window.
fn infer_recorded(
    model: &LoadedModel,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, OipError> {
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING)
        && encoding.as_bytes() != b"identity"
    {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Encoding {:?} is not supported: send the request uncompressed",
                String::from_utf8_lossy(encoding.as_bytes())
            ),
        ));
    }
    let req = request::decode(
        body,
        headers
            .get(request::HEADER_LENGTH)
            .map(HeaderValue::as_bytes),
    )
    .map_err(bad_request)?;
    let wanted: Vec<&str> = req.outputs.iter().map(|o| o.name.as_str()).collect();
    model.check_outputs(&wanted).map_err(bad_request)?;
    // Every output is computed (and profiled); `outputs` only selects what is sent back.
    let start = std::time::Instant::now();
    let mut outputs = model
        .infer_adaptive(&req.inputs, &[])
        .map_err(bad_request)?;
    model
        .window
        .record(&req.inputs, &outputs, start.elapsed().as_secs_f64() * 1e6);
    if !wanted.is_empty() {
        outputs.retain(|o| wanted.contains(&o.name.as_str()));
    }
    let encoded = response::encode(
        &model.manifest.name,
        model.manifest.version,
        req.id.as_deref(),
        &outputs,
        |name| req.binary(name),
    )
    .map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode: {e}"),
        )
    })?;
    Ok(match encoded.header_length {
        None => ([(header::CONTENT_TYPE, "application/json")], encoded.body).into_response(),
        Some(n) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                ),
                (
                    HeaderName::from_static(request::HEADER_LENGTH),
                    HeaderValue::from(n),
                ),
            ],
            encoded.body,
        )
            .into_response(),
    })
}
