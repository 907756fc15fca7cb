//! What the fleet reports, for admins: fleet metrics, drift, drift rules.

use axum::Json;
use axum::extract::{Path, Query, State};
use edgefleet_common::drift::DriftConfig;

use super::error::ApiResult;
use super::{Admin, AppState};
use crate::telemetry::{DriftQuery, DriftReport, FleetMetrics};

/// `GET /api/v1/fleet/metrics`: devices online, per model version requests, errors, latency
/// and drift over the last hour, ingest counters.
pub async fn metrics(_: Admin, State(hub): State<AppState>) -> ApiResult<Json<FleetMetrics>> {
    Ok(Json(hub.telemetry.fleet_metrics()?))
}

/// `GET /api/v1/models/{name}/versions/{version}/drift?from=&to=&tag=&feature=`
pub async fn drift(
    _: Admin,
    State(hub): State<AppState>,
    Path((model, version)): Path<(String, u64)>,
    Query(q): Query<DriftQuery>,
) -> ApiResult<Json<DriftReport>> {
    Ok(Json(hub.telemetry.drift(&model, version, &q)?))
}

/// `GET /api/v1/models/{name}/drift-config`
pub async fn get_drift_config(
    _: Admin,
    State(hub): State<AppState>,
    Path(model): Path<String>,
) -> ApiResult<Json<DriftConfig>> {
    Ok(Json(hub.telemetry.drift_config(&model)?))
}

/// `PUT /api/v1/models/{name}/drift-config`: methods and thresholds, per column if needed.
pub async fn put_drift_config(
    _: Admin,
    State(hub): State<AppState>,
    Path(model): Path<String>,
    Json(c): Json<DriftConfig>,
) -> ApiResult<Json<DriftConfig>> {
    hub.telemetry.set_drift_config(&model, &c)?;
    Ok(Json(c))
}
