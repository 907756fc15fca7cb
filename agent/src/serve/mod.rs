//! The Open Inference Protocol v2 (KServe v2 REST) server over the active models.
//!
//! Every handler looks models up in [`ActiveModels`], which owns the served set and its
//! snapshot contract (a request keeps the map it started with). The server only adds the
//! protocol: routing, decoding, encoding, and recording each request in the served model's
//! window. `/metrics` also reads telemetry's outbox and the updater's stale-assignment count,
//! handed in at construction ([`Metrics`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use edgefleet_common::TensorSpec;
use serde_json::{Value, json};

use crate::active::{ActiveModels, Served};
use crate::feedback::Feedback;
use crate::telemetry::Telemetry;

pub mod feedback;
pub mod request;
pub mod response;

/// Largest inference request body.
pub const MAX_INFER_BODY: usize = 8 * 1024 * 1024;
/// Largest element count of one input tensor.
pub const MAX_ELEMENTS: usize = 1 << 20;

/// What `/metrics` reports besides the served models. `Metrics::default()` reports the
/// models only (a server without an agent around it, as in tests and benchmarks).
#[derive(Clone, Default)]
pub struct Metrics {
    /// Telemetry, for the outbox gauges. Weak: the outbox must close when the agent stops
    /// (the uplink drops the last strong reference), even while the server drains requests.
    pub telemetry: Weak<Telemetry>,
    /// The updater's count of older assignments ignored for the version already served.
    pub stale_assignments: Option<Arc<AtomicU64>>,
}

/// The router's state: one `Arc` cloned per request.
struct Server {
    models: Arc<ActiveModels>,
    metrics: Metrics,
    /// The matching store and quality book, when the agent keeps them.
    feedback: Option<Arc<Feedback>>,
    /// Feedback calls in flight: beyond [`feedback::MAX_IN_FLIGHT`] a call gets 429.
    feedback_slots: Arc<tokio::sync::Semaphore>,
}

type Shared = State<Arc<Server>>;

/// `GET /metrics`: Prometheus (OpenMetrics) text for the node's scraper.
async fn scrape(State(server): Shared) -> Response {
    let outbox = server.metrics.telemetry.upgrade().map(|t| t.outbox.stats());
    let stale = server
        .metrics
        .stale_assignments
        .as_ref()
        .map(|n| n.load(Ordering::Relaxed));
    let feedback = server.feedback.as_ref().map(|f| f.stats());
    match crate::telemetry::exposition(&server.models, outbox, stale, feedback) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The OIP server without feedback (the feedback endpoint answers 404).
pub fn router(models: Arc<ActiveModels>, metrics: Metrics) -> Router {
    router_with_feedback(models, metrics, None)
}

/// The OIP server; with `feedback`, inference requests that carry an id are kept for
/// matching, and `POST /v2/models/{name}/feedback` scores their truths.
pub fn router_with_feedback(
    models: Arc<ActiveModels>,
    metrics: Metrics,
    feedback: Option<Arc<Feedback>>,
) -> Router {
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
        .route("/metrics", get(scrape))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_v))
        .route(
            "/v2/models/{name}/feedback",
            post(feedback::handle)
                .layer(DefaultBodyLimit::max(crate::feedback::body::MAX_BODY_BYTES)),
        )
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint; see /v2 and /v2/models/{name}".into(),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_INFER_BODY))
        .with_state(Arc::new(Server {
            models,
            metrics,
            feedback,
            feedback_slots: Arc::new(tokio::sync::Semaphore::new(feedback::MAX_IN_FLIGHT)),
        }))
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

async fn server_ready(State(s): Shared) -> StatusCode {
    if s.models.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn find(models: &ActiveModels, name: &str, version: Option<&str>) -> Result<Arc<Served>, OipError> {
    let Some(s) = models.get(name) else {
        let known: Vec<String> = models.snapshot().keys().cloned().collect();
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("model {name:?} is not loaded; loaded models: {known:?}"),
        ));
    };
    let loaded = s.model.manifest.version;
    if let Some(v) = version
        && v != loaded.to_string()
    {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!(
                "version {v:?} of model {name:?} is not loaded; the loaded version is {loaded}"
            ),
        ));
    }
    Ok(s)
}

fn spec_json(s: &TensorSpec) -> Value {
    json!({"name": s.name, "datatype": s.datatype.as_str(), "shape": s.shape})
}

fn metadata(
    models: &ActiveModels,
    name: &str,
    version: Option<&str>,
) -> Result<Response, OipError> {
    let served = find(models, name, version)?;
    let m = &served.model.manifest;
    Ok(axum::Json(json!({
            "name": m.name,
            "versions": [m.version.to_string()],
            "platform": "onnx",
            "inputs": m.inputs.iter().map(spec_json).collect::<Vec<_>>(),
            "outputs": m.outputs.iter().map(spec_json).collect::<Vec<_>>(),
    }))
    .into_response())
}

async fn model_metadata(State(s): Shared, Path(name): Path<String>) -> Result<Response, OipError> {
    metadata(&s.models, &name, None)
}

async fn model_metadata_v(
    State(s): Shared,
    Path((name, v)): Path<(String, String)>,
) -> Result<Response, OipError> {
    metadata(&s.models, &name, Some(&v))
}

async fn model_ready(State(s): Shared, Path(name): Path<String>) -> Result<StatusCode, OipError> {
    find(&s.models, &name, None).map(|_| StatusCode::OK)
}

async fn model_ready_v(
    State(s): Shared,
    Path((name, v)): Path<(String, String)>,
) -> Result<StatusCode, OipError> {
    find(&s.models, &name, Some(&v)).map(|_| StatusCode::OK)
}

async fn infer(
    State(s): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OipError> {
    run_infer(&s, &name, None, &headers, &body)
}

async fn infer_v(
    State(s): Shared,
    Path((name, v)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OipError> {
    run_infer(&s, &name, Some(&v), &headers, &body)
}

fn run_infer(
    server: &Server,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, OipError> {
    let served = find(&server.models, name, version)?;
    let result = infer_recorded(&served, server.feedback.as_deref(), headers, body);
    if result.is_err() {
        // Every request the model refused counts in its window's error rate.
        served.window.record_error();
    }
    result
}

/// The request id a client sent as a header (`x-request-id`, or `inference-request-id`), for
/// clients that cannot put one in the body.
pub fn header_id(headers: &HeaderMap) -> Option<String> {
    [
        feedback::HEADER_REQUEST_ID,
        feedback::HEADER_INFERENCE_REQUEST_ID,
    ]
    .iter()
    .find_map(|h| headers.get(*h))
    .and_then(|v| v.to_str().ok())
    .map(str::trim)
    .filter(|v| !v.is_empty())
    .map(str::to_owned)
}

/// Parses, infers and records one request in the model's window, and, when it has an id, in
/// the feedback queue.
fn infer_recorded(
    served: &Served,
    feedback: Option<&Feedback>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, OipError> {
    let model = &served.model;
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
    let mut req = request::decode(
        body,
        headers
            .get(request::HEADER_LENGTH)
            .map(HeaderValue::as_bytes),
    )
    .map_err(bad_request)?;
    if req.id.is_none() {
        req.id = header_id(headers);
    }
    let wanted: Vec<&str> = req.outputs.iter().map(|o| o.name.as_str()).collect();
    model.check_outputs(&wanted).map_err(bad_request)?;
    // Every output is computed (and profiled); `outputs` only selects what is sent back.
    let start = std::time::Instant::now();
    let mut outputs = model
        .infer_adaptive(&req.inputs, &[])
        .map_err(bad_request)?;
    served
        .window
        .record(&req.inputs, &outputs, start.elapsed().as_secs_f64() * 1e6);
    if let (Some(f), Some(id)) = (feedback, &req.id) {
        f.record(&served.scoring, id, &req.inputs, &outputs);
    }
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
