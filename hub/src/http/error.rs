//! The domain's errors as HTTP answers: a status and `{"error": message}`, without leaking
//! internals (storage and internal errors are logged in full and answered generically).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::error::HubError;

/// What a handler fails with.
#[derive(Debug)]
pub struct AppError {
    status: StatusCode,
    message: String,
}

pub type ApiResult<T> = Result<T, AppError>;

impl AppError {
    /// An answer only HTTP has (a range that cannot be satisfied).
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

fn status(e: &HubError) -> StatusCode {
    match e {
        HubError::Invalid(_) => StatusCode::BAD_REQUEST,
        HubError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        HubError::Forbidden(_) => StatusCode::FORBIDDEN,
        HubError::NotFound(_) => StatusCode::NOT_FOUND,
        HubError::Conflict(_) => StatusCode::CONFLICT,
        HubError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        HubError::Rejected(e) => match e {
            edgefleet_common::Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            edgefleet_common::Error::Malformed { .. }
            | edgefleet_common::Error::InvalidName { .. }
            | edgefleet_common::Error::InvalidManifest(_)
            | edgefleet_common::Error::InvalidTensorData(_)
            | edgefleet_common::Error::InvalidKey(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::FORBIDDEN,
        },
        HubError::Storage(_) | HubError::Io(_) | HubError::Internal(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

impl<E: Into<HubError>> From<E> for AppError {
    fn from(e: E) -> Self {
        let e = e.into();
        let status = status(&e);
        let message = if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
            "internal error; the hub's log has the details".to_owned()
        } else {
            e.to_string()
        };
        Self { status, message }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}
