//! Edgefleet's inference engine: an ONNX model loaded with tract, checked against the
//! manifest that names its tensors, its smoke tests run, and inferences on
//! [`edgefleet_common::Tensor`]s. The agent serves models with it; the hub scores a
//! retrained candidate and the champion on held-out rows with it, so both judge a model by
//! the same code.
//!
//! - [`model`]: [`model::LoadedModel`] (load, infer, smoke tests), [`model::describe`];
//! - [`onnx_ml`]: the ONNX-ML operators (`ai.onnx.ml`) registered over tract-onnx's own;
//! - [`error`]: the engine's error, [`EngineError`].
//!
//! Architecture invariant: the engine does no network I/O and knows neither agent nor hub; it
//! reads the model file it is given and nothing else.
#![forbid(unsafe_code)]

pub mod error;
pub mod model;
pub mod onnx_ml;

pub use error::{EngineError, EngineResult};
pub use model::LoadedModel;
