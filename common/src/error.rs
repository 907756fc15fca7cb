//! The one error type of the wire contract.

/// Everything that can be wrong with a document, a key or a name received from outside.
///
/// Messages say what was wrong and, where it helps, what to do; they never contain secrets.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("bad signature on {what}: it was not signed by key {signer}")]
    BadSignature { what: &'static str, signer: String },
    #[error(
        "key {signer} is not trusted to sign {what}: it is neither the pinned root key nor delegated by it (ask the admin for a delegation: `edgefleet delegate`)"
    )]
    UntrustedSigner { what: &'static str, signer: String },
    #[error("the delegation to key {signer} does not cover {scope:?} (it covers {patterns:?})")]
    OutOfScope {
        signer: String,
        scope: String,
        patterns: Vec<String>,
    },
    #[error("the delegation to key {signer} does not allow signing {what}")]
    NotPermitted { signer: String, what: &'static str },
    #[error("{what} expired at {expires_at} (now {now}); sign a fresh one")]
    Expired {
        what: &'static str,
        expires_at: u64,
        now: u64,
    },
    #[error("{what} is not valid before {not_before} (now {now})")]
    NotYetValid {
        what: &'static str,
        not_before: u64,
        now: u64,
    },
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("root rotation rejected: {0}")]
    Rotation(String),
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    /// A hub instruction (a telemetry window) that is not for this device, stale or out of range.
    #[error("window instruction refused: {0}")]
    Instruction(String),
    /// Tensor data that does not fit its datatype or shape; the message names the element.
    #[error("{0}")]
    InvalidTensorData(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
