//! The wire contract shared by the Edgefleet hub and agent.
//!
//! Everything a device and the hub must agree on byte for byte lives here: the trust documents
//! (root rotations, delegations), model manifests, assignments, device enrollment, their
//! canonical encoding and signature checks, and the rules for safe model names.
//!
//! Architecture invariant: this crate does no I/O (no files, no sockets, no clocks). Callers pass
//! the current time in, which is what lets the agent fix one time at the start of an update.
#![forbid(unsafe_code)]

pub mod armor;
pub mod assignment;
pub mod device;
pub mod digest;
pub mod drift;
pub mod encoding;
pub mod error;
pub mod keys;
pub mod manifest;
pub mod name;
pub mod quality;
pub mod sample;
pub mod sketch;
pub mod telemetry;
pub mod tensor;
pub mod trust;

pub use assignment::{Assignment, Target};
pub use digest::Digest;
pub use error::{Error, Result};
pub use keys::{PublicKey, SecretKey};
pub use manifest::{ArtifactRef, Lineage, ModelManifest, SmokeTest, TensorSpec};
pub use tensor::{DataType, Tensor, TensorData};
pub use trust::{Delegation, Permission, RootRotation, Signed, TrustRoot};
