//! `/api/v1/blobs` and `/api/v1/models`: artifacts and signed manifests.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiResult;
use super::{Admin, AppState, Reader};
use crate::registry::{ModelVersions, Published};

/// `PUT /api/v1/blobs/{sha256}`: the body streamed to the registry, which publishes it under
/// its digest only if the hash matches the URL.
pub async fn put_blob(
    _: Admin,
    State(hub): State<AppState>,
    Path(sha): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let received = hub
        .registry
        .receive_blob(&sha, body.into_data_stream())
        .await?;
    let status = if received.existing {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(received)).into_response())
}

/// `POST /api/v1/models` with a postcard `Signed<ModelManifest>`.
pub async fn post_manifest(
    _: Admin,
    State(hub): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Published>)> {
    Ok((StatusCode::CREATED, Json(hub.publish_model(&body).await?)))
}

pub async fn list_models(
    _: Admin,
    State(hub): State<AppState>,
) -> ApiResult<Json<Vec<ModelVersions>>> {
    Ok(Json(hub.registry.list()?))
}

pub async fn get_model(
    _: Admin,
    State(hub): State<AppState>,
    Path(model): Path<String>,
) -> ApiResult<Json<ModelVersions>> {
    Ok(Json(hub.registry.get(&model)?))
}

/// `GET .../manifest`: the signed manifest's postcard bytes.
pub async fn get_manifest(
    _: Reader,
    State(hub): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (record, _) = hub.registry.find(&model, &version)?;
    let bytes = record.manifest.to_bytes()?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}
