//! What can go wrong with a training job: each error names the file or parameter at fault and
//! what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {detail}")]
    Invalid { file: &'static str, detail: String },
    #[error("params.json: {0}")]
    Params(String),
    #[error("the model cannot be fitted: {0}")]
    Fit(String),
}

pub type TrainResult<T> = Result<T, TrainError>;

pub(crate) fn invalid(file: &'static str, detail: impl Into<String>) -> TrainError {
    TrainError::Invalid {
        file,
        detail: detail.into(),
    }
}
