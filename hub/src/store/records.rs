//! What the hub stores about models, devices, desired state and sessions.

use edgefleet_common::device::DeviceStatus;
use edgefleet_common::{ModelManifest, PublicKey, Signed, Target};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelRecord {
    pub manifest: Signed<ModelManifest>,
    pub uploaded_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceRecord {
    pub id: String,
    pub public_key: PublicKey,
    pub tags: Vec<String>,
    pub hostname: String,
    pub agent_version: String,
    pub approved: bool,
    pub enrolled_at: u64,
    pub last_seen: Option<u64>,
    pub status: Option<DeviceStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DesiredRecord {
    pub target: Target,
    pub model: String,
    pub version: u64,
    pub set_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub device_id: String,
    pub expires_at: u64,
}
