//! The engine's error: which model, and what was wrong with it.

/// Why a model could not be loaded or failed its smoke tests.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model does not load, or does not match its manifest.
    #[error("model {name} v{version}: {message}")]
    Model {
        name: String,
        version: u64,
        message: String,
    },
    /// The model loaded but its manifest's smoke tests failed.
    #[error("model {name} v{version}: {message}")]
    SmokeTest {
        name: String,
        version: u64,
        message: String,
    },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub type EngineResult<T> = Result<T, EngineError>;
