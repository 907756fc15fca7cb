//! `/api/v1/rollouts`: staged rollouts, for admins.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::error::ApiResult;
use super::{Admin, AppState};
use crate::error::HubError;
use crate::rollout::{AuditEntry, RolloutSpec, RolloutView};

/// `POST /api/v1/rollouts`: creates a rollout; the hub starts its first wave within a second.
pub async fn create(
    _: Admin,
    State(hub): State<AppState>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<RolloutView>)> {
    // Parsed here rather than by axum's extractor, so a bad spec gets the API's JSON error
    // naming the field.
    let spec: RolloutSpec = serde_json::from_slice(&body)
        .map_err(|e| HubError::Invalid(format!("rollout spec: {e}")))?;
    let r = hub.rollouts.create(spec).await?;
    Ok((StatusCode::CREATED, Json(hub.rollouts.view(r)?)))
}

pub async fn list(_: Admin, State(hub): State<AppState>) -> ApiResult<Json<Vec<RolloutView>>> {
    let views = hub
        .rollouts
        .list()?
        .into_iter()
        .map(|r| hub.rollouts.view(r))
        .collect::<Result<_, _>>()?;
    Ok(Json(views))
}

/// A rollout with per-wave progress (targeted, downloading, active, failed with reasons) and
/// the gates' verdicts with their measured values.
pub async fn get(
    _: Admin,
    State(hub): State<AppState>,
    Path(id): Path<u64>,
) -> ApiResult<Json<RolloutView>> {
    Ok(Json(hub.rollouts.view(hub.rollouts.get(id)?)?))
}

/// `POST /api/v1/rollouts/{id}/{pause|resume|abort|rollback}`
pub async fn act(
    _: Admin,
    State(hub): State<AppState>,
    Path((id, action)): Path<(u64, String)>,
) -> ApiResult<Json<RolloutView>> {
    let r = hub.rollouts.act(id, &action).await?;
    Ok(Json(hub.rollouts.view(r)?))
}

pub async fn audit(
    _: Admin,
    State(hub): State<AppState>,
    Path(id): Path<u64>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    Ok(Json(hub.rollouts.audit(id)?))
}
