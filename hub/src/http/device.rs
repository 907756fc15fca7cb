//! The device's own API: enrollment, sessions, its assignments (long-poll) and status reports.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use edgefleet_common::Digest;
use edgefleet_common::device::{BUNDLE_FORMAT_HEADER, DeviceStatus};
use serde::Deserialize;

use super::error::ApiResult;
use super::{AppState, DeviceSession};
use crate::devices::{Enrolled, Session};
use crate::error::HubError;

/// Longest long-poll.
const MAX_WAIT_SECS: u64 = 60;

/// `POST /api/v1/enroll` with a postcard `Signed<EnrollRequest>` self-signed by the device key.
pub async fn enroll(State(hub): State<AppState>, body: Bytes) -> ApiResult<Json<Enrolled>> {
    Ok(Json(hub.enroll(&body).await?))
}

#[derive(Deserialize)]
pub struct ChallengeRequest {
    device_id: String,
}

/// `POST /api/v1/device/challenge`: a single-use nonce for an approved device.
pub async fn challenge(
    State(hub): State<AppState>,
    Json(req): Json<ChallengeRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let nonce = hub.devices.challenge(&req.device_id)?;
    Ok(Json(serde_json::json!({ "nonce": nonce })))
}

/// `POST /api/v1/device/session` with a postcard `Signed<SessionProof>` over the nonce.
pub async fn session(State(hub): State<AppState>, body: Bytes) -> ApiResult<Json<Session>> {
    Ok(Json(hub.devices.open_session(&body)?))
}

#[derive(Deserialize)]
pub struct WaitQuery {
    /// Long-poll: wait up to this many seconds (max 60) for a change if the ETag still matches.
    wait: Option<u64>,
}

/// `GET /api/v1/device/assignments`: postcard `AssignmentBundle`, with ETag / If-None-Match.
pub async fn assignments(
    dev: DeviceSession,
    State(hub): State<AppState>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let mut generation = hub.desired.watch_generation();
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT_SECS));
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // The newest bundle format the agent reads, from its header alone (an agent downgraded
    // since its last status report sends none); bad or absent means format 1.
    let format = headers
        .get(BUNDLE_FORMAT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1);
    loop {
        // Mark the current generation seen before computing, so a change made while we compute
        // wakes the wait below instead of being missed.
        generation.borrow_and_update();
        let device = hub
            .devices
            .get(&dev.device_id)?
            .ok_or_else(|| HubError::NotFound("device record vanished".into()))?;
        let bytes = hub.desired.issue_bytes(&device, format)?;
        let etag = format!("\"{}\"", Digest::of(&bytes));
        if if_none_match.as_deref() != Some(etag.as_str()) {
            return Ok((
                [
                    (header::ETAG, etag),
                    (header::CONTENT_TYPE, "application/octet-stream".into()),
                ],
                bytes,
            )
                .into_response());
        }
        let unchanged =
            || (StatusCode::NOT_MODIFIED, [(header::ETAG, etag.clone())]).into_response();
        if hub.is_stopping()
            || tokio::time::timeout_at(deadline, generation.changed())
                .await
                .is_err()
        {
            return Ok(unchanged());
        }
    }
}

/// `POST /api/v1/device/status`: the agent's report after each update attempt.
pub async fn report_status(
    dev: DeviceSession,
    State(hub): State<AppState>,
    Json(status): Json<DeviceStatus>,
) -> ApiResult<Json<serde_json::Value>> {
    hub.report_status(&dev.device_id, status)?;
    Ok(Json(serde_json::json!({"ok": true})))
}
