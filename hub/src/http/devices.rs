//! `/api/v1/devices`: the fleet's devices, for admins.

use axum::Json;
use axum::extract::{Path, State};

use super::error::ApiResult;
use super::{Admin, AppState};
use crate::store::DeviceRecord;
use crate::telemetry::DeviceDetail;

pub async fn list(_: Admin, State(hub): State<AppState>) -> ApiResult<Json<Vec<DeviceRecord>>> {
    Ok(Json(hub.devices.list()?))
}

/// A device with its liveness and latest telemetry window.
pub async fn get(
    _: Admin,
    State(hub): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceDetail>> {
    let device = hub.devices.require(&id)?;
    Ok(Json(hub.telemetry.device_detail(device)?))
}

pub async fn approve(
    _: Admin,
    State(hub): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceRecord>> {
    Ok(Json(hub.approve(&id).await?))
}
