//! Training samples, for admins: a model's capture policy, what the devices sent, the export.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::ApiResult;
use super::{Admin, AppState};
use crate::desired::CaptureRequest;
use crate::telemetry::samples::{SamplesQuery, SamplesSummary};

/// The export's digest: SHA-256 of exactly the CSV bytes in the body.
pub const DIGEST_HEADER: &str = "x-edgefleet-dataset-sha256";
pub const ROWS_HEADER: &str = "x-edgefleet-dataset-rows";

fn policy_json(model: &str, p: Option<crate::store::CapturePolicy>) -> Json<Value> {
    Json(match p {
        Some(p) => json!({
            "model": model, "capture": true, "rate": f64::from(p.rate_ppm) / 1e6,
            "max_rows": p.max_rows, "set_at": p.set_at,
        }),
        None => json!({"model": model, "capture": false}),
    })
}

/// `GET /api/v1/models/{name}/capture`
pub async fn get_capture(
    _: Admin,
    State(hub): State<AppState>,
    Path(model): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = hub.desired.capture_policy(&model)?;
    Ok(policy_json(&model, p))
}

/// `PUT /api/v1/models/{name}/capture` `{"rate": 0.1, "max_rows": 100}`: devices serving the
/// model capture samples from then on.
pub async fn put_capture(
    _: Admin,
    State(hub): State<AppState>,
    Path(model): Path<String>,
    Json(req): Json<CaptureRequest>,
) -> ApiResult<Json<Value>> {
    let p = hub.desired.set_capture(&model, Some(req)).await?;
    Ok(policy_json(&model, p))
}

/// `DELETE /api/v1/models/{name}/capture`: capture off.
pub async fn delete_capture(
    _: Admin,
    State(hub): State<AppState>,
    Path(model): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = hub.desired.set_capture(&model, None).await?;
    Ok(policy_json(&model, p))
}

/// `GET /api/v1/models/{name}/samples`: batches, rows and bytes held, the export's columns.
pub async fn summary(
    _: Admin,
    State(hub): State<AppState>,
    Path(model): Path<String>,
) -> ApiResult<Json<SamplesSummary>> {
    Ok(Json(hub.telemetry.samples_summary(&model)?))
}

/// `GET /api/v1/models/{name}/samples/export?version=&from=&to=&format=`: CSV, with its
/// SHA-256 in `x-edgefleet-dataset-sha256`; with `format=schema`, the same export described in
/// JSON: its Table Schema (column types and roles), rows, bytes and SHA-256.
pub async fn export(
    _: Admin,
    State(hub): State<AppState>,
    Path(model): Path<String>,
    Query(q): Query<SamplesQuery>,
) -> ApiResult<Response> {
    let schema_only = match q.format.as_deref() {
        None | Some("csv") => false,
        Some("schema") => true,
        Some(other) => {
            return Err(crate::error::HubError::Invalid(format!(
                "format={other:?} is not a dataset format: use csv (the default) or schema"
            ))
            .into());
        }
    };
    let telemetry = hub.telemetry.clone();
    let d = tokio::task::spawn_blocking(move || telemetry.export_samples(&model, &q))
        .await
        .map_err(|e| crate::error::HubError::Internal(e.to_string()))??;
    if schema_only {
        return Ok(Json(json!({
            "schema": d.schema, "rows": d.rows, "batches": d.batches,
            "bytes": d.csv.len(), "sha256": d.sha256.to_string(),
        }))
        .into_response());
    }
    let digest = HeaderValue::try_from(d.sha256.to_string())
        .map_err(|e| crate::error::HubError::Internal(e.to_string()))?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/csv")),
            (HeaderName::from_static(DIGEST_HEADER), digest),
            (
                HeaderName::from_static(ROWS_HEADER),
                HeaderValue::from(d.rows),
            ),
        ],
        d.csv,
    )
        .into_response())
}
