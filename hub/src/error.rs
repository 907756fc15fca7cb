//! The domain's error: what went wrong, in the domain's words. The transports map it to their
//! own answers (`http::error` to a status and a JSON body; the MQTT consumer to a verdict).

/// Every way a hub operation can fail. Messages are for the caller: they say what was wrong
/// and what to do. Storage and internal errors carry details for the log only; the HTTP layer
/// answers them with a generic message.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The caller's input is malformed or breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// No credentials, or credentials the hub does not know.
    #[error("{0}")]
    Unauthenticated(String),
    /// Known caller, not allowed (or a signature that does not verify).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what is stored (a version that is not new, a missing blob).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// A signed document or wire value refused by the common checks.
    #[error("rejected: {0}")]
    Rejected(#[from] edgefleet_common::Error),
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type HubResult<T> = Result<T, HubError>;
