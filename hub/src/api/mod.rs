//! The hub's HTTP API under `/api/v1`.
//!
//! Admin calls need `Authorization: Bearer <admin token>`. Device calls need a session token
//! obtained by signing a hub challenge with the enrolled device key (`device.rs`). Signed
//! documents travel as their postcard bytes (`application/octet-stream`); everything else is
//! JSON. Errors are `{"error": "..."}` with a 4xx that says what was wrong.

mod artifact;
mod device;
pub mod fleet;
mod models;

pub(crate) use device::bundle_for;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::{get, post, put};
use edgefleet_common::Digest;

use crate::config::Loaded;
use crate::error::HubError;
use crate::store::Store;

/// Largest JSON or signed-document body (manifests with smoke tests and a reference profile).
pub const MAX_DOCUMENT_BODY: usize = 16 * 1024 * 1024;

pub struct AppState {
    pub store: Store,
    /// The running configuration and keys; SIGHUP swaps in a newly validated one.
    pub loaded: arc_swap::ArcSwap<Loaded>,
    pub admin_token_hash: Digest,
    /// Bumped whenever desired state or models change; long-polling devices wait on it.
    pub changes: tokio::sync::watch::Sender<u64>,
    /// Set at shutdown so long-polls answer at once instead of holding the shutdown up.
    pub stopping: std::sync::atomic::AtomicBool,
    /// Fleet telemetry: aggregates, latest windows, liveness, drift rules.
    pub telemetry: crate::telemetry::TelemetryStore,
    /// The MQTT side, once started (never, with `mqtt_enabled = false`).
    pub mqtt: std::sync::OnceLock<std::sync::Arc<crate::mqtt::Mqtt>>,
    /// Held while assignments are issued: the MQTT push and a device's HTTP long-poll build
    /// the same device's bundle at the same moment, and without it both would allocate a
    /// serial for the same version (the device then sees the lower one as a replay).
    pub issuing: std::sync::Mutex<()>,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    pub fn changed(&self) {
        self.changes.send_modify(|g| *g += 1);
    }

    pub fn begin_shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        self.changed();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }
}

pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/metrics", get(fleet::prometheus))
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
        .route("/api/v1/devices", get(device::list_devices))
        .route("/api/v1/devices/{id}", get(device::get_device))
        .route("/api/v1/devices/{id}/approve", post(device::approve))
        .route(
            "/api/v1/assignments",
            post(device::assign).get(device::list_desired),
        )
        .route("/api/v1/enroll", post(device::enroll))
        .route("/api/v1/device/challenge", post(device::challenge))
        .route("/api/v1/device/session", post(device::session))
        .route(
            "/api/v1/device/assignments",
            get(device::device_assignments),
        )
        .route("/api/v1/device/status", post(device::report_status))
        .layer(DefaultBodyLimit::max(MAX_DOCUMENT_BODY))
        .with_state(state)
}

async fn health(State(s): State<SharedState>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "root_key": s.loaded.load().trust.root_key.to_hex(),
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

impl FromRequestParts<SharedState> for Admin {
    type Rejection = HubError;
    async fn from_request_parts(parts: &mut Parts, s: &SharedState) -> Result<Self, HubError> {
        match bearer(parts) {
            // Comparing digests keeps the comparison independent of where the strings differ.
            Some(t) if Digest::of(t.trim().as_bytes()) == s.admin_token_hash => Ok(Admin),
            Some(_) => Err(HubError::Unauthorized("wrong admin token".into())),
            None => Err(HubError::Unauthorized(
                "missing `Authorization: Bearer <token>`; the admin token is in the hub's data dir (admin-token)".into(),
            )),
        }
    }
}

/// An authenticated device session.
pub struct DeviceSession {
    pub device_id: String,
}

impl FromRequestParts<SharedState> for DeviceSession {
    type Rejection = HubError;
    async fn from_request_parts(parts: &mut Parts, s: &SharedState) -> Result<Self, HubError> {
        let Some(token) = bearer(parts) else {
            return Err(HubError::Unauthorized(
                "missing device session token".into(),
            ));
        };
        match s.store.session(&Digest::of(token.trim().as_bytes()))? {
            Some(rec) if rec.expires_at > crate::now() => Ok(DeviceSession {
                device_id: rec.device_id,
            }),
            _ => Err(HubError::Unauthorized(
                "session expired or unknown; open a new one".into(),
            )),
        }
    }
}

/// Either an admin or a device: for manifests and artifacts, which both need.
pub enum Reader {
    Admin,
    Device(String),
}

impl FromRequestParts<SharedState> for Reader {
    type Rejection = HubError;
    async fn from_request_parts(parts: &mut Parts, s: &SharedState) -> Result<Self, HubError> {
        if Admin::from_request_parts(parts, s).await.is_ok() {
            return Ok(Reader::Admin);
        }
        DeviceSession::from_request_parts(parts, s)
            .await
            .map(|d| Reader::Device(d.device_id))
    }
}
