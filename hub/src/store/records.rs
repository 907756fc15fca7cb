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
    /// Reads a stored device record, also one an earlier hub wrote with an older status shape
    /// (stored records are postcard, which has no defaults for missing fields): before
    /// `installs`, `bundle_format` and `window_secs` (V1), before `time_zone` (V2).
    pub fn decode(bytes: &[u8]) -> HubResult<Self> {
        const WHAT: &str = "stored device record";
        let current = match super::decode_stored::<Self>(WHAT, bytes) {
            Ok(d) => return Ok(d),
            Err(e) => e,
        };
        if let Ok(v2) = super::decode_stored::<OldRecord<DeviceStatusV2>>(WHAT, bytes) {
            return Ok(v2.into());
        }
        match super::decode_stored::<OldRecord<DeviceStatusV1>>(WHAT, bytes) {
            Ok(v1) => Ok(v1.into()),
            Err(_) => Err(current),
        }
    }

    /// The device's time zone as its agent reported it.
    pub fn time_zone(&self) -> Option<&str> {
        self.status.as_ref().and_then(|s| s.time_zone.as_deref())
    }
}

/// A device record as earlier hubs stored it, with the status shape of their day.
#[derive(Deserialize)]
struct OldRecord<S> {
    id: String,
    public_key: PublicKey,
    tags: Vec<String>,
    hostname: String,
    agent_version: String,
    approved: bool,
    enrolled_at: u64,
    last_seen: Option<u64>,
    status: Option<S>,
}

/// The status before bundle format 2.
#[derive(Deserialize)]
struct DeviceStatusV1 {
    active: Vec<ModelRef>,
    previous: Vec<ModelRef>,
    last_error: Option<String>,
    agent_version: String,
}

/// The status before `time_zone`.
#[derive(Deserialize)]
struct DeviceStatusV2 {
    active: Vec<ModelRef>,
    previous: Vec<ModelRef>,
    last_error: Option<String>,
    agent_version: String,
    installs: Vec<edgefleet_common::device::InstallStatus>,
    bundle_format: u32,
    window_secs: Option<u64>,
}

impl From<DeviceStatusV1> for DeviceStatus {
    fn from(s: DeviceStatusV1) -> Self {
        DeviceStatus {
            active: s.active,
            previous: s.previous,
            last_error: s.last_error,
            agent_version: s.agent_version,
            ..DeviceStatus::default()
        }
    }
}

impl From<DeviceStatusV2> for DeviceStatus {
    fn from(s: DeviceStatusV2) -> Self {
        DeviceStatus {
            active: s.active,
            previous: s.previous,
            last_error: s.last_error,
            agent_version: s.agent_version,
            installs: s.installs,
            bundle_format: s.bundle_format,
            window_secs: s.window_secs,
            time_zone: None,
        }
    }
}

impl<S: Into<DeviceStatus>> From<OldRecord<S>> for DeviceRecord {
    fn from(v: OldRecord<S>) -> Self {
        DeviceRecord {
            id: v.id,
            public_key: v.public_key,
            tags: v.tags,
            hostname: v.hostname,
            agent_version: v.agent_version,
            approved: v.approved,
            enrolled_at: v.enrolled_at,
            last_seen: v.last_seen,
            status: v.status.map(Into::into),
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

    /// A record written before `time_zone` (bundle format 2's status) still reads.
    #[test]
    fn device_records_without_a_time_zone_still_read() {
        #[derive(Serialize)]
        struct V2Status {
            active: Vec<ModelRef>,
            previous: Vec<ModelRef>,
            last_error: Option<String>,
            agent_version: String,
            installs: Vec<edgefleet_common::device::InstallStatus>,
            bundle_format: u32,
            window_secs: Option<u64>,
        }
        #[derive(Serialize)]
        struct V2 {
            id: String,
            public_key: PublicKey,
            tags: Vec<String>,
            hostname: String,
            agent_version: String,
            approved: bool,
            enrolled_at: u64,
            last_seen: Option<u64>,
            status: Option<V2Status>,
        }
        let install = edgefleet_common::device::InstallStatus {
            model: "demand".into(),
            version: 2,
            phase: edgefleet_common::device::InstallPhase::Installed,
            reason: None,
            at: 9,
        };
        let old = V2 {
            id: "shop-2".into(),
            public_key: edgefleet_common::SecretKey::from_seed([4; 32]).public(),
            tags: vec![],
            hostname: "h".into(),
            agent_version: "0.1.0".into(),
            approved: true,
            enrolled_at: 5,
            last_seen: None,
            status: Some(V2Status {
                active: vec![],
                previous: vec![],
                last_error: None,
                agent_version: "0.1.0".into(),
                installs: vec![install.clone()],
                bundle_format: 2,
                window_secs: Some(60),
            }),
        };
        let bytes = edgefleet_common::encoding::to_bytes(&old).expect("encode");
        let d = DeviceRecord::decode(&bytes).expect("V2 record");
        let status = d.status.clone().expect("status");
        assert_eq!(status.installs, vec![install]);
        assert_eq!((status.bundle_format, status.window_secs), (2, Some(60)));
        assert_eq!(d.time_zone(), None);
        let mut now = d.clone();
        if let Some(s) = now.status.as_mut() {
            s.time_zone = Some("Europe/Berlin".into());
        }
        let again = edgefleet_common::encoding::to_bytes(&now).expect("encode");
        let back = DeviceRecord::decode(&again).expect("current");
        assert_eq!(back.time_zone(), Some("Europe/Berlin"));
    }
}

/// A model's sample capture, as an admin set it (`PUT /api/v1/models/{name}/capture`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturePolicy {
    /// The share of matched feedback rows offered to each window's reservoir, parts per
    /// million.
    pub rate_ppm: u32,
    /// Rows kept per window and device.
    pub max_rows: u32,
    pub set_at: u64,
}
