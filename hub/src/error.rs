//! The hub's error type and its mapping to HTTP responses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Every way a hub operation can fail. HTTP handlers return it; `IntoResponse` maps it to a
/// status and a JSON `{"error": message}` without leaking internals (storage errors are logged
/// in full and answered with a generic message).
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    RangeNotSatisfiable(String),
    #[error("rejected: {0}")]
    Rejected(#[from] edgefleet_common::Error),
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl HubError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::Rejected(e) => match e {
                edgefleet_common::Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                edgefleet_common::Error::Malformed { .. }
                | edgefleet_common::Error::InvalidName { .. }
                | edgefleet_common::Error::InvalidManifest(_)
                | edgefleet_common::Error::InvalidTensorData(_)
                | edgefleet_common::Error::InvalidKey(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::FORBIDDEN,
            },
            Self::Storage(_) | Self::Io(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for HubError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
            "internal error; the hub's log has the details".to_owned()
        } else {
            self.to_string()
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

pub type HubResult<T> = Result<T, HubError>;
