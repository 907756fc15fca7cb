//! The hub's HTTP API under `/api/v1`: axum only. Each handler parses the request, calls the
//! domain through [`Hub`], and renders the answer; the rules live in the domain modules.
//!
//! Admin calls need `Authorization: Bearer <admin token>`. Device calls need a session token
//! obtained by signing a hub challenge with the enrolled device key (`device.rs`). Signed
//! documents travel as their postcard bytes (`application/octet-stream`); everything else is
//! JSON. Errors are `{"error": "..."}` with a 4xx that says what was wrong ([`error`]).

mod artifact;
mod assignments;
mod device;
mod devices;
pub mod error;
mod fleet;
mod models;
mod prometheus;
mod retrain;
mod rollouts;
mod samples;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::{get, post, put};

use crate::error::HubError;
use crate::hub::Hub;
use error::AppError;

/// Largest JSON or signed-document body (manifests with smoke tests and a reference profile).
pub const MAX_DOCUMENT_BODY: usize = 16 * 1024 * 1024;

pub type AppState = Arc<Hub>;

pub fn router(hub: AppState) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/metrics", get(prometheus::exposition))
        .route("/api/v1/fleet/metrics", get(fleet::metrics))
        .route(
            "/api/v1/models/{name}/versions/{version}/drift",
            get(fleet::drift),
        )
        .route(
            "/api/v1/models/{name}/drift-config",
            get(fleet::get_drift_config).put(fleet::put_drift_config),
        )
        .route(
            "/api/v1/models/{name}/capture",
            get(samples::get_capture)
                .put(samples::put_capture)
                .delete(samples::delete_capture),
        )
        .route(
            "/api/v1/models/{name}/retrain-policy",
            get(retrain::get_policy)
                .put(retrain::put_policy)
                .delete(retrain::delete_policy),
        )
        .route("/api/v1/models/{name}/retrain", post(retrain::request))
        .route("/api/v1/models/{name}/runs", get(retrain::runs))
        .route("/api/v1/retrain/jobs", get(retrain::jobs))
        .route("/api/v1/retrain/jobs/{id}", get(retrain::job))
        .route("/api/v1/retrain/runs/{id}", get(retrain::run))
        .route(
            "/api/v1/retrain/runs/{id}/reproduce",
            post(retrain::reproduce),
        )
        .route(
            "/api/v1/models/{name}/versions/{version}/approve",
            post(retrain::approve),
        )
        .route(
            "/api/v1/models/{name}/versions/{version}/lineage",
            get(retrain::lineage),
        )
        .route("/api/v1/models/{name}/samples", get(samples::summary))
        .route("/api/v1/models/{name}/samples/export", get(samples::export))
        .route(
            "/api/v1/blobs/{sha256}",
            put(models::put_blob).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/models",
            post(models::post_manifest).get(models::list_models),
        )
        .route("/api/v1/models/{name}", get(models::get_model))
        .route(
            "/api/v1/models/{name}/versions/{version}/manifest",
            get(models::get_manifest),
        )
        .route(
            "/api/v1/models/{name}/versions/{version}/artifact",
            get(artifact::get_artifact),
        )
        .route("/api/v1/devices", get(devices::list))
        .route("/api/v1/devices/{id}", get(devices::get))
        .route("/api/v1/devices/{id}/approve", post(devices::approve))
        .route(
            "/api/v1/assignments",
            post(assignments::assign)
                .get(assignments::list)
                .delete(assignments::unassign),
        )
        .route(
            "/api/v1/rollouts",
            post(rollouts::create).get(rollouts::list),
        )
        .route("/api/v1/rollouts/{id}", get(rollouts::get))
        .route("/api/v1/rollouts/{id}/audit", get(rollouts::audit))
        .route("/api/v1/rollouts/{id}/{action}", post(rollouts::act))
        .route("/api/v1/enroll", post(device::enroll))
        .route("/api/v1/device/challenge", post(device::challenge))
        .route("/api/v1/device/session", post(device::session))
        .route("/api/v1/device/assignments", get(device::assignments))
        .route("/api/v1/device/status", post(device::report_status))
        .layer(DefaultBodyLimit::max(MAX_DOCUMENT_BODY))
        .with_state(hub)
}

async fn health(State(hub): State<AppState>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "root_key": hub.config().trust.root_key.to_hex(),
    }))
}

fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Proof that the request carries the admin token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, hub: &AppState) -> Result<Self, AppError> {
        match bearer(parts) {
            Some(t) if hub.is_admin(t) => Ok(Admin),
            Some(_) => Err(HubError::Unauthenticated("wrong admin token".into()).into()),
            None => Err(HubError::Unauthenticated(
                "missing `Authorization: Bearer <token>`; the admin token is in the hub's data dir (admin-token)".into(),
            )
            .into()),
        }
    }
}

/// An authenticated device session.
pub struct DeviceSession {
    pub device_id: String,
}

impl FromRequestParts<AppState> for DeviceSession {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, hub: &AppState) -> Result<Self, AppError> {
        let Some(token) = bearer(parts) else {
            return Err(HubError::Unauthenticated("missing device session token".into()).into());
        };
        Ok(DeviceSession {
            device_id: hub.devices.session_device(token)?,
        })
    }
}

/// Either an admin or a device: for manifests and artifacts, which both need.
pub enum Reader {
    Admin,
    Device(String),
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, hub: &AppState) -> Result<Self, AppError> {
        if Admin::from_request_parts(parts, hub).await.is_ok() {
            return Ok(Reader::Admin);
        }
        DeviceSession::from_request_parts(parts, hub)
            .await
            .map(|d| Reader::Device(d.device_id))
    }
}
