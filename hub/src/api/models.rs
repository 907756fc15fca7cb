//! Model registry: blobs (artifacts) and signed manifests.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use edgefleet_common::{Digest, ModelManifest, Signed, digest::Hasher, name};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use super::{Admin, Reader, SharedState};
use crate::error::{HubError, HubResult};
use crate::store::ModelRecord;

/// `PUT /api/v1/blobs/{sha256}`: streams the body to a temp file, hashing it, and publishes it
/// under its digest only if the hash matches the URL.
pub async fn put_blob(
    _: Admin,
    State(s): State<SharedState>,
    Path(sha): Path<String>,
    body: Body,
) -> HubResult<Response> {
    let digest = Digest::from_hex(&sha)?;
    let limit = s.loaded.load().config.max_artifact_bytes;
    if s.store.blob_size(&digest).is_some() {
        return Ok((
            StatusCode::OK,
            Json(serde_json::json!({"sha256": digest, "existing": true})),
        )
            .into_response());
    }
    let tmp = s.store.tmp_path()?;
    let result = async {
        let mut file = tokio::fs::File::create(&tmp).await?;
        let mut hasher = Hasher::new();
        let mut size = 0u64;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                if e.to_string().contains("length limit") {
                    HubError::PayloadTooLarge(format!(
                        "artifact over the hub's limit of {limit} bytes"
                    ))
                } else {
                    HubError::BadRequest(format!("upload interrupted: {e}"))
                }
            })?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(HubError::PayloadTooLarge(format!(
                    "artifact over the hub's limit of {limit} bytes (max_artifact_bytes)"
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        file.sync_all().await?;
        let got = hasher.finish();
        if got != digest {
            return Err(HubError::BadRequest(format!(
                "artifact hash mismatch: the body hashes to {got}, the URL says {digest}"
            )));
        }
        tokio::fs::rename(&tmp, s.store.blob_path(&digest)).await?;
        Ok(size)
    }
    .await;
    match result {
        Ok(size) => Ok((
            StatusCode::CREATED,
            Json(serde_json::json!({"sha256": digest, "size": size})),
        )
            .into_response()),
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

#[derive(Serialize)]
pub struct PublishedModel {
    pub name: String,
    pub version: u64,
    pub manifest_digest: Digest,
    pub signer: String,
}

/// `POST /api/v1/models` with a postcard `Signed<ModelManifest>`: verified against the pinned
/// root (signature, delegation scope and expiry), checked structurally, its artifact must
/// already be uploaded with the exact size, and its version must be new.
pub async fn post_manifest(
    _: Admin,
    State(s): State<SharedState>,
    body: Bytes,
) -> HubResult<(StatusCode, Json<PublishedModel>)> {
    let signed = Signed::<ModelManifest>::from_bytes(&body)?;
    let manifest = signed.verify(&s.loaded.load().trust, crate::now())?;
    manifest.validate()?;
    match s.store.blob_size(&manifest.artifact.sha256) {
        None => {
            return Err(HubError::Conflict(format!(
                "artifact {} is not uploaded; PUT it to /api/v1/blobs/{} first",
                manifest.artifact.sha256, manifest.artifact.sha256
            )));
        }
        Some(size) if size != manifest.artifact.size => {
            return Err(HubError::BadRequest(format!(
                "manifest says the artifact is {} bytes, the uploaded one is {size}",
                manifest.artifact.size
            )));
        }
        Some(_) => {}
    }
    let record = ModelRecord {
        manifest: signed.clone(),
        uploaded_at: crate::now(),
    };
    s.store
        .insert_model(&record, &manifest.name, manifest.version)?;
    s.store.flush().await?;
    s.changed();
    tracing::info!(model = %manifest.name, version = manifest.version, signer = %signed.signer.short(), "model published");
    Ok((
        StatusCode::CREATED,
        Json(PublishedModel {
            name: manifest.name,
            version: manifest.version,
            manifest_digest: signed.digest(),
            signer: signed.signer.to_hex(),
        }),
    ))
}

#[derive(Serialize)]
pub struct VersionSummary {
    pub version: u64,
    pub manifest_digest: Digest,
    pub artifact_sha256: Digest,
    pub artifact_size: u64,
    pub created_at: u64,
    pub uploaded_at: u64,
    pub signer: String,
    pub description: String,
    pub lineage: edgefleet_common::Lineage,
    pub inputs: Vec<edgefleet_common::TensorSpec>,
    pub outputs: Vec<edgefleet_common::TensorSpec>,
}

#[derive(Serialize)]
pub struct ModelSummary {
    pub name: String,
    pub versions: Vec<VersionSummary>,
}

fn summarise(records: Vec<ModelRecord>) -> HubResult<Vec<ModelSummary>> {
    let mut out: Vec<ModelSummary> = Vec::new();
    for r in records {
        let m = r.manifest.decode_unverified()?;
        let v = VersionSummary {
            version: m.version,
            manifest_digest: r.manifest.digest(),
            artifact_sha256: m.artifact.sha256,
            artifact_size: m.artifact.size,
            created_at: m.created_at,
            uploaded_at: r.uploaded_at,
            signer: r.manifest.signer.to_hex(),
            description: m.description,
            lineage: m.lineage,
            inputs: m.inputs,
            outputs: m.outputs,
        };
        match out.last_mut() {
            Some(last) if last.name == m.name => last.versions.push(v),
            _ => out.push(ModelSummary {
                name: m.name,
                versions: vec![v],
            }),
        }
    }
    Ok(out)
}

pub async fn list_models(
    _: Admin,
    State(s): State<SharedState>,
) -> HubResult<Json<Vec<ModelSummary>>> {
    Ok(Json(summarise(s.store.models()?)?))
}

pub async fn get_model(
    _: Admin,
    State(s): State<SharedState>,
    Path(model): Path<String>,
) -> HubResult<Json<ModelSummary>> {
    name::validate(&model)?;
    let records: Vec<_> = s
        .store
        .models()?
        .into_iter()
        .filter(|r| {
            r.manifest
                .decode_unverified()
                .map(|m| m.name == model)
                .unwrap_or(false)
        })
        .collect();
    summarise(records)?
        .pop()
        .map(Json)
        .ok_or_else(|| HubError::NotFound(format!("no model named {model:?}")))
}

pub(super) fn find(
    s: &SharedState,
    model: &str,
    version: &str,
) -> HubResult<(ModelRecord, ModelManifest)> {
    name::validate(model)?;
    let version: u64 = version.parse().map_err(|_| {
        HubError::BadRequest(format!("version {version:?} is not a positive integer"))
    })?;
    let record = s
        .store
        .model(model, version)?
        .ok_or_else(|| HubError::NotFound(format!("model {model} has no version {version}")))?;
    let manifest = record.manifest.decode_unverified()?;
    Ok((record, manifest))
}

/// `GET .../manifest`: the signed manifest's postcard bytes.
pub async fn get_manifest(
    _: Reader,
    State(s): State<SharedState>,
    Path((model, version)): Path<(String, String)>,
) -> HubResult<Response> {
    let (record, _) = find(&s, &model, &version)?;
    let bytes = record.manifest.to_bytes()?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}
