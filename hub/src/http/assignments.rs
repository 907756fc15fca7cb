//! `/api/v1/assignments`: desired state, for admins.

use axum::Json;
use axum::extract::State;

use super::error::ApiResult;
use super::{Admin, AppState};
use crate::desired::{AssignRequest, UnassignRequest};
use crate::store::DesiredRecord;

/// `POST /api/v1/assignments`: sets desired state for a device or a tag.
pub async fn assign(
    _: Admin,
    State(hub): State<AppState>,
    Json(req): Json<AssignRequest>,
) -> ApiResult<Json<DesiredRecord>> {
    Ok(Json(hub.desired.assign(req).await?))
}

/// `DELETE /api/v1/assignments` (`{"target": …, "model": …}`): removes an assignment;
/// answers with the removed record, 404 when there was none.
pub async fn unassign(
    _: Admin,
    State(hub): State<AppState>,
    Json(req): Json<UnassignRequest>,
) -> ApiResult<Json<DesiredRecord>> {
    Ok(Json(hub.desired.unassign(req).await?))
}

pub async fn list(_: Admin, State(hub): State<AppState>) -> ApiResult<Json<Vec<DesiredRecord>>> {
    Ok(Json(hub.desired.list()?))
}
