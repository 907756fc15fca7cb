//! Desired state: which model version a device (or every device with a tag) should serve.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::encoding::Document;
use crate::error::Result;
use crate::name;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Device(String),
    Tag(String),
}

impl Target {
    pub fn matches(&self, device_id: &str, tags: &[String]) -> bool {
        match self {
            Target::Device(d) => d == device_id,
            Target::Tag(t) => tags.iter().any(|x| x == t),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Device(d) => write!(f, "device:{d}"),
            Target::Tag(t) => write!(f, "tag:{t}"),
        }
    }
}

/// "Serve `model` at `version`, whose manifest hashes to `manifest_digest`."
///
/// Binding the manifest digest (not only name and version) stops mix-and-match: a device can
/// only be given the exact manifest the signer saw. `serial` grows with every assignment the
/// signer issues, so a device refuses a replayed older one; `expires_at` stops a freeze attack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub target: Target,
    pub model: String,
    pub version: u64,
    pub manifest_digest: Digest,
    pub serial: u64,
    pub issued_at: u64,
    pub expires_at: u64,
}

impl Document for Assignment {
    const KIND: &'static str = "assignment";
    const WHAT: &'static str = "assignment";
}

impl Assignment {
    pub fn validate(&self) -> Result<()> {
        name::validate(&self.model)?;
        match &self.target {
            Target::Device(d) | Target::Tag(d) => name::validate(d),
        }
    }
}
