//! `POST /v2/models/{name}/feedback`: the HTTP side of ground truth. The work is
//! [`Feedback::submit`](crate::feedback::Feedback::submit), on the blocking pool (it reads
//! sled); this maps its result to a status and JSON.
//!
//! - 200 `{"matched": n, "late": n, "unknown": [ids], "duplicate": [ids]}`: at least one row
//!   matched and was scored.
//! - 404 `{"error", "unknown": [ids]}`: nothing matched (never recorded, expired or evicted;
//!   the message names the bounds).
//! - 409 `{"error", "duplicate": [ids]}`: every row named already had its feedback.
//! - 400 a shape, type or range error; 413 a body over 1 MiB or more than 1024 items;
//!   429 (with `Retry-After`) more than [`MAX_IN_FLIGHT`] calls at once; 500 the store failed
//!   (nothing was scored: send it again).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{Server, header_id};
use crate::feedback::{Refusal, Status, body};

/// Feedback calls in flight before more get 429.
pub const MAX_IN_FLIGHT: usize = 32;
/// The request id headers, in the order they are read.
pub const HEADER_REQUEST_ID: &str = "x-request-id";
pub const HEADER_INFERENCE_REQUEST_ID: &str = "inference-request-id";

fn refusal(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

pub(super) async fn handle(
    State(server): State<Arc<Server>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(feedback) = server.feedback.clone() else {
        return refusal(
            StatusCode::NOT_FOUND,
            "this server keeps no predictions for feedback".into(),
        );
    };
    let body = match body {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is over the limit of {} bytes: split the feedback into several calls (at most {} items each)",
                    body::MAX_BODY_BYTES,
                    body::MAX_ITEMS
                ),
            );
        }
        Err(r) => {
            return refusal(
                r.status(),
                format!("cannot read the body: {}", r.body_text()),
            );
        }
    };
    let Ok(permit) = server.feedback_slots.clone().try_acquire_owned() else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            axum::Json(json!({
                "error": format!("more than {MAX_IN_FLIGHT} feedback calls at once: retry after a second, or send more items per call")
            })),
        )
            .into_response();
    };
    let served = server.models.get(&name).map(|s| s.model.manifest.version);
    let id = header_id(&headers);
    let result = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        feedback.submit(&name, served, id.as_deref(), &body)
    })
    .await;
    match result {
        Ok(Ok(outcome)) => (StatusCode::OK, axum::Json(outcome)).into_response(),
        Ok(Err(r)) => refused(r),
        Err(e) => refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the feedback call failed ({e}); nothing was scored: send it again"),
        ),
    }
}

fn refused(r: Refusal) -> Response {
    let status = match r.status {
        Status::BadRequest => StatusCode::BAD_REQUEST,
        Status::NotFound => StatusCode::NOT_FOUND,
        Status::Conflict => StatusCode::CONFLICT,
        Status::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Status::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut body = json!({ "error": r.message });
    if !r.unknown.is_empty() {
        body["unknown"] = json!(r.unknown);
    }
    if !r.duplicate.is_empty() {
        body["duplicate"] = json!(r.duplicate);
    }
    (status, axum::Json(body)).into_response()
}
