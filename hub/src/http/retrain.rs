//! Retraining, for admins: a model's policy, a manual request, the jobs and their runs, the
//! approval of a retrained version, a version's lineage, a run run again.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiResult;
use super::{Admin, AppState};
use crate::error::HubError;
use crate::retrain::{Job, LineageStep, Policy, PolicyRequest, Reproduction, Run};

/// Parsed here rather than by axum's extractor, so a bad body gets the API's JSON error
/// naming the field.
fn parse<T: serde::de::DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, HubError> {
    serde_json::from_slice(body).map_err(|e| HubError::Invalid(format!("{what}: {e}")))
}

/// `GET /api/v1/models/{name}/retrain-policy`
pub async fn get_policy(
    _: Admin,
    State(hub): State<AppState>,
    Path(model): Path<String>,
) -> ApiResult<Json<Policy>> {
    let p = hub
        .retrain
        .policy(&model)?
        .ok_or_else(|| HubError::NotFound(format!("{model} has no retraining policy")))?;
    Ok(Json(p))
}

/// `PUT /api/v1/models/{name}/retrain-policy` with a [`PolicyRequest`].
pub async fn put_policy(
    _: Admin,
    State(hub): State<AppState>,
    Path(model): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Policy>> {
    let req: PolicyRequest = parse("retraining policy", &body)?;
    Ok(Json(
        hub.retrain.set_policy(&model, req, crate::now()).await?,
    ))
}

/// `DELETE /api/v1/models/{name}/retrain-policy`
pub async fn delete_policy(
    _: Admin,
    State(hub): State<AppState>,
    Path(model): Path<String>,
) -> ApiResult<Json<Value>> {
    let had = hub.retrain.delete_policy(&model).await?;
    Ok(Json(json!({"model": model, "removed": had})))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrainRequest {
    #[serde(default)]
    pub reason: String,
}

/// `POST /api/v1/models/{name}/retrain` `{"reason": "…"}`: queues a job now.
pub async fn request(
    _: Admin,
    State(hub): State<AppState>,
    Path(model): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let req: RetrainRequest = if body.is_empty() {
        RetrainRequest::default()
    } else {
        parse("retrain request", &body)?
    };
    let job = hub
        .retrain
        .request(&model, &req.reason, crate::now())
        .await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    pub model: Option<String>,
}

/// `GET /api/v1/retrain/jobs?model=`: jobs, oldest first.
pub async fn jobs(
    _: Admin,
    State(hub): State<AppState>,
    Query(q): Query<JobsQuery>,
) -> ApiResult<Json<Vec<Job>>> {
    if let Some(m) = &q.model {
        edgefleet_common::name::validate(m).map_err(HubError::from)?;
    }
    let jobs = hub
        .retrain
        .jobs()?
        .into_iter()
        .filter(|j| q.model.as_ref().is_none_or(|m| *m == j.model))
        .collect();
    Ok(Json(jobs))
}

/// `GET /api/v1/retrain/jobs/{id}`
pub async fn job(
    _: Admin,
    State(hub): State<AppState>,
    Path(id): Path<u64>,
) -> ApiResult<Json<Job>> {
    Ok(Json(hub.retrain.job(id)?))
}

/// `GET /api/v1/models/{name}/runs`: the model's training runs, oldest first, each with
/// what went in (dataset and holdout digests, params, seed, trainer) and what came out.
pub async fn runs(
    _: Admin,
    State(hub): State<AppState>,
    Path(model): Path<String>,
) -> ApiResult<Json<Vec<Run>>> {
    Ok(Json(hub.retrain.runs(&model)?))
}

/// `GET /api/v1/retrain/runs/{id}`
pub async fn run(
    _: Admin,
    State(hub): State<AppState>,
    Path(id): Path<u64>,
) -> ApiResult<Json<Run>> {
    Ok(Json(hub.retrain.run(id)?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    /// A rollout spec without model and version; absent: the policy's.
    #[serde(default)]
    pub rollout: Option<serde_json::Map<String, Value>>,
}

fn version(v: &str) -> Result<u64, HubError> {
    v.parse()
        .map_err(|_| HubError::Invalid(format!("version {v:?} is not a positive integer")))
}

/// `POST /api/v1/models/{name}/versions/{version}/approve` `{"rollout": {…}}`: starts the
/// rollout of a retrained version that waits for an admin.
pub async fn approve(
    _: Admin,
    State(hub): State<AppState>,
    Path((model, v)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Job>> {
    let req: ApproveRequest = if body.is_empty() {
        ApproveRequest::default()
    } else {
        parse("approval", &body)?
    };
    Ok(Json(
        hub.retrain
            .approve(&model, version(&v)?, req.rollout)
            .await?,
    ))
}

/// `GET /api/v1/models/{name}/versions/{version}/lineage`: the version and its ancestors,
/// newest first, each with its job, run and rollouts.
pub async fn lineage(
    _: Admin,
    State(hub): State<AppState>,
    Path((model, v)): Path<(String, String)>,
) -> ApiResult<Json<Vec<LineageStep>>> {
    Ok(Json(hub.retrain.lineage(&model, version(&v)?)?))
}

/// `POST /api/v1/retrain/runs/{id}/reproduce`: runs a recorded run again and compares the
/// model bytes (waits for the trainer; nothing is published).
pub async fn reproduce(
    _: Admin,
    State(hub): State<AppState>,
    Path(id): Path<u64>,
) -> ApiResult<Json<Reproduction>> {
    Ok(Json(hub.retrain.reproduce(id).await?))
}
