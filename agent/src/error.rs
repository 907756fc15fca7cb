//! The agent's error type.

use edgefleet_common::device::InstallPhase;

/// Why an update step or a model load failed. Reported to the hub and logged; the agent keeps
/// serving what it has.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("refused: {0}")]
    Trust(#[from] edgefleet_common::Error),
    #[error("hub: {0}")]
    Hub(String),
    #[error("download: {0}")]
    Download(String),
    #[error("model {name} v{version}: {message}")]
    Model {
        name: String,
        version: u64,
        message: String,
    },
    /// The model loaded but its manifest's smoke tests failed on this device.
    #[error("model {name} v{version}: {message}")]
    SmokeTest {
        name: String,
        version: u64,
        message: String,
    },
    #[error("refused assignment: {0}")]
    Assignment(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

impl From<edgefleet_engine::EngineError> for AgentError {
    fn from(e: edgefleet_engine::EngineError) -> Self {
        use edgefleet_engine::EngineError as E;
        match e {
            E::Model {
                name,
                version,
                message,
            } => AgentError::Model {
                name,
                version,
                message,
            },
            E::SmokeTest {
                name,
                version,
                message,
            } => AgentError::SmokeTest {
                name,
                version,
                message,
            },
            E::Io(e) => AgentError::Io(e),
        }
    }
}

impl From<reqwest::Error> for AgentError {
    fn from(e: reqwest::Error) -> Self {
        // reqwest's Display omits the cause chain; include it so "connection refused" shows.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        AgentError::Hub(msg)
    }
}

impl AgentError {
    /// The phase a status report gives an install that failed with this error.
    pub fn install_phase(&self) -> InstallPhase {
        match self {
            AgentError::SmokeTest { .. } => InstallPhase::SmokeTestFailed,
            _ => InstallPhase::Failed,
        }
    }
}

pub type AgentResult<T> = Result<T, AgentError>;
