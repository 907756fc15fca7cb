//! What the hub stores about models, devices, desired state and sessions.

use edgefleet_common::device::{DeviceStatus, ModelRef};
use edgefleet_common::{ModelManifest, PublicKey, Signed, Target};
use serde::{Deserialize, Serialize};

use crate::error::HubResult;

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

/// A telemetry window a rollout asks of one device while its wave installs and bakes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowOrder {
    pub rollout: u64,
    pub window_secs: u64,
    /// Shown to the device (`rollout 4 wave 2 canary`).
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub device_id: String,
    pub expires_at: u64,
}

impl DeviceRecord {
    /// Reads a stored device record, also one a hub wrote before `DeviceStatus` gained
    /// `installs`, `bundle_format` and `window_secs` (stored records are postcard, which has
    /// no defaults for missing fields).
    pub fn decode(bytes: &[u8]) -> HubResult<Self> {
        match super::decode_stored::<Self>("stored device record", bytes) {
            Ok(d) => Ok(d),
            Err(current) => {
                match super::decode_stored::<DeviceRecordV1>("stored device record", bytes) {
                    Ok(v1) => Ok(v1.into()),
                    Err(_) => Err(current),
                }
            }
        }
    }
}

/// A device record as hubs before bundle format 2 stored it.
#[derive(Deserialize)]
struct DeviceRecordV1 {
    id: String,
    public_key: PublicKey,
    tags: Vec<String>,
    hostname: String,
    agent_version: String,
    approved: bool,
    enrolled_at: u64,
    last_seen: Option<u64>,
    status: Option<DeviceStatusV1>,
}

#[derive(Deserialize)]
struct DeviceStatusV1 {
    active: Vec<ModelRef>,
    previous: Vec<ModelRef>,
    last_error: Option<String>,
    agent_version: String,
}

impl From<DeviceRecordV1> for DeviceRecord {
    fn from(v: DeviceRecordV1) -> Self {
        DeviceRecord {
            id: v.id,
            public_key: v.public_key,
            tags: v.tags,
            hostname: v.hostname,
            agent_version: v.agent_version,
            approved: v.approved,
            enrolled_at: v.enrolled_at,
            last_seen: v.last_seen,
            status: v.status.map(|s| DeviceStatus {
                active: s.active,
                previous: s.previous,
                last_error: s.last_error,
                agent_version: s.agent_version,
                ..DeviceStatus::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record written by the previous hub (the old status shape) still reads.
    #[test]
    fn device_records_of_the_previous_format_still_read() {
        #[derive(Serialize)]
        struct OldStatus<'a> {
            active: Vec<ModelRef>,
            previous: Vec<ModelRef>,
            last_error: Option<&'a str>,
            agent_version: &'a str,
        }
        #[derive(Serialize)]
        struct Old<'a> {
            id: &'a str,
            public_key: PublicKey,
            tags: Vec<String>,
            hostname: &'a str,
            agent_version: &'a str,
            approved: bool,
            enrolled_at: u64,
            last_seen: Option<u64>,
            status: Option<OldStatus<'a>>,
        }
        let key = edgefleet_common::SecretKey::from_seed([3; 32]).public();
        let old = Old {
            id: "shop-1",
            public_key: key,
            tags: vec!["shops".into()],
            hostname: "h",
            agent_version: "0.1.0",
            approved: true,
            enrolled_at: 5,
            last_seen: Some(6),
            status: Some(OldStatus {
                active: vec![ModelRef {
                    name: "demand".into(),
                    version: 1,
                }],
                previous: vec![],
                last_error: Some("boom"),
                agent_version: "0.1.0",
            }),
        };
        let bytes = edgefleet_common::encoding::to_bytes(&old).expect("encode");
        let d = DeviceRecord::decode(&bytes).expect("old record");
        let status = d.status.clone().expect("status");
        assert_eq!(status.active[0].version, 1);
        assert_eq!(status.last_error.as_deref(), Some("boom"));
        assert_eq!(status.bundle_format, 0);
        // And the current format round-trips.
        let again = edgefleet_common::encoding::to_bytes(&d).expect("encode");
        assert_eq!(
            DeviceRecord::decode(&again).expect("new").status,
            Some(status)
        );
        assert!(DeviceRecord::decode(&bytes[..bytes.len() - 2]).is_err());
    }
}
