//! Device identity: enrollment, session authentication, and the status a device reports.

use serde::{Deserialize, Serialize};

use crate::encoding::Document;
use crate::error::Result;
use crate::keys::PublicKey;
use crate::name;

pub const MAX_TAGS: usize = 32;

/// A device asks to join the fleet. Self-signed with `public_key`, which proves possession.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub device_id: String,
    pub public_key: PublicKey,
    pub tags: Vec<String>,
    pub hostname: String,
    pub agent_version: String,
    /// A pre-shared enrollment token; when it matches the hub's, the device is approved at once.
    pub enrollment_token: Option<String>,
    pub requested_at: u64,
}

impl Document for EnrollRequest {
    const KIND: &'static str = "enroll";
    const WHAT: &'static str = "enrollment request";
}

impl EnrollRequest {
    pub fn validate(&self) -> Result<()> {
        name::validate(&self.device_id)?;
        if self.tags.len() > MAX_TAGS {
            return Err(crate::Error::InvalidManifest(format!(
                "more than {MAX_TAGS} tags"
            )));
        }
        for t in &self.tags {
            name::validate(t)?;
        }
        Ok(())
    }
}

/// The device's answer to a hub challenge: signs the hub's nonce to open a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionProof {
    pub device_id: String,
    pub nonce: Vec<u8>,
}

impl Document for SessionProof {
    const KIND: &'static str = "session";
    const WHAT: &'static str = "session proof";
}

/// A model version, as devices report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    pub version: u64,
}

/// What an agent reports after each update attempt (JSON over the authenticated session).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub active: Vec<ModelRef>,
    pub previous: Vec<ModelRef>,
    /// The last update error, if the last attempt failed.
    pub last_error: Option<String>,
    pub agent_version: String,
}

/// The hub's reply to `GET /api/v1/device/assignments`: the signed assignments that apply to
/// the device, postcard bytes of each `Signed<Assignment>`, plus the root rotation chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentBundle {
    pub assignments: Vec<crate::trust::Signed<crate::assignment::Assignment>>,
    pub rotations: Vec<crate::trust::RootRotation>,
}

impl Document for AssignmentBundle {
    const KIND: &'static str = "assignment-bundle";
    const WHAT: &'static str = "assignment bundle";
}
