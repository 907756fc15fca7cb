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

/// What an agent reports after each update attempt, and when an install changes phase (JSON
/// over the authenticated session).
///
/// Fields added after the first release carry `#[serde(default)]`, so a hub accepts the
/// reports of older agents, and older hubs ignore the new fields (they do not deny unknown
/// ones).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub active: Vec<ModelRef>,
    pub previous: Vec<ModelRef>,
    /// The last update error, if the last attempt failed.
    pub last_error: Option<String>,
    pub agent_version: String,
    /// Where each assignment the device last received stands, one entry per model.
    #[serde(default)]
    pub installs: Vec<InstallStatus>,
    /// The newest [`AssignmentBundle`] format the agent reads; 0 (an agent older than the
    /// field) reads only format 1. The hub sends each device the newest format it reads.
    #[serde(default)]
    pub bundle_format: u32,
    /// The telemetry window the agent closes now, in seconds (its own, or a hub instruction's).
    #[serde(default)]
    pub window_secs: Option<u64>,
    /// The device's time zone, an IANA name (`Europe/Berlin`), for rollouts' maintenance
    /// windows in the device's own zone; none when the agent does not know it.
    #[serde(default)]
    pub time_zone: Option<String>,
}

/// Whether `zone` has the shape of an IANA time zone name (`Europe/Berlin`, `Etc/GMT+5`,
/// `UTC`): what an agent may report; whether the zone exists is the hub's to look up.
pub fn valid_time_zone(zone: &str) -> bool {
    !zone.is_empty()
        && zone.len() <= 64
        && !zone.starts_with('/')
        && !zone.contains("..")
        && zone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'))
}

/// How far a device got with one assigned model version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallStatus {
    pub model: String,
    pub version: u64,
    pub phase: InstallPhase,
    /// Why, for `failed` and `smoke_test_failed`.
    pub reason: Option<String>,
    /// Unix seconds of the last phase change.
    pub at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallPhase {
    /// The artifact is being downloaded (or the manifest fetched).
    Downloading,
    /// Verified and installed on disk, not yet serving.
    Installed,
    /// Loaded but its manifest's smoke tests failed: the previous version keeps serving.
    SmokeTestFailed,
    /// Any other failure (verification, download, disk): the previous version keeps serving.
    Failed,
    /// Serving.
    Active,
    /// No longer assigned: served until the grace period ends, then deleted.
    Removing,
}

/// The newest bundle format: 2 added the signed telemetry-window instruction and the assigned
/// set, 3 the signed sample-capture instructions.
pub const BUNDLE_FORMAT: u32 = 3;

/// The HTTP request header in which an agent's poll names the newest bundle format it reads
/// (before its first status report has told the hub).
pub const BUNDLE_FORMAT_HEADER: &str = "edgefleet-bundle-format";

/// The hub's reply to `GET /api/v1/device/assignments` and its retained MQTT message: the
/// signed assignments that apply to the device, the root rotation chain, (format 2) a
/// signed telemetry-window instruction and the signed assigned set, and (format 3) signed
/// sample-capture instructions. Encode with [`AssignmentBundle::to_wire`] for the
/// format the device reads, decode with [`AssignmentBundle::from_wire`], which reads both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentBundle {
    pub assignments: Vec<crate::trust::Signed<crate::assignment::Assignment>>,
    pub rotations: Vec<crate::trust::RootRotation>,
    /// Close telemetry windows on this schedule (a rollout's bake); none: the device's own.
    pub window: Option<crate::trust::Signed<WindowInstruction>>,
    /// The models assigned to the device, signed: the only statement an agent removes a
    /// model on (the bundle itself is an unsigned container anyone on the broker could forge).
    pub assigned: Option<crate::trust::Signed<AssignedSet>>,
    /// Format 3: per model whose samples the hub collects, a signed capture instruction for
    /// this device. None: no capture.
    pub capture: Vec<crate::trust::Signed<crate::sample::CaptureInstruction>>,
    /// The format [`AssignmentBundle::from_wire`] read (0: built in this process, not
    /// decoded). Not on the wire: a reader must not take what an older format cannot say
    /// (capture instructions) as "none".
    #[serde(skip)]
    pub format: u32,
}

/// Format 2 of the bundle, as agents before sample capture decode it.
#[derive(Serialize, Deserialize)]
struct BundleV2 {
    assignments: Vec<crate::trust::Signed<crate::assignment::Assignment>>,
    rotations: Vec<crate::trust::RootRotation>,
    window: Option<crate::trust::Signed<WindowInstruction>>,
    assigned: Option<crate::trust::Signed<AssignedSet>>,
}

/// Format 1 of the bundle, as agents older than format 2 decode it.
#[derive(Serialize, Deserialize)]
struct BundleV1 {
    assignments: Vec<crate::trust::Signed<crate::assignment::Assignment>>,
    rotations: Vec<crate::trust::RootRotation>,
}

impl AssignmentBundle {
    /// The bundle's bytes in `format` (1, 2, or 3 and later). An older format leaves out what
    /// it does not have: an older agent refuses bytes it does not expect.
    pub fn to_wire(&self, format: u32) -> Result<Vec<u8>> {
        match format {
            3.. => crate::encoding::to_bytes(self),
            2 => crate::encoding::to_bytes(&BundleV2 {
                assignments: self.assignments.clone(),
                rotations: self.rotations.clone(),
                window: self.window.clone(),
                assigned: self.assigned.clone(),
            }),
            _ => crate::encoding::to_bytes(&BundleV1 {
                assignments: self.assignments.clone(),
                rotations: self.rotations.clone(),
            }),
        }
    }

    /// Reads format 3, else 2, else 1. Unambiguous: each format is the one before plus fields
    /// at the end, and every decoder refuses missing or trailing bytes.
    pub fn from_wire(bytes: &[u8]) -> Result<Self> {
        const WHAT: &str = "assignment bundle";
        let v3 = match crate::encoding::from_bytes::<Self>(WHAT, bytes) {
            Ok(b) => return Ok(Self { format: 3, ..b }),
            Err(e) => e,
        };
        if let Ok(v2) = crate::encoding::from_bytes::<BundleV2>(WHAT, bytes) {
            return Ok(Self {
                assignments: v2.assignments,
                rotations: v2.rotations,
                window: v2.window,
                assigned: v2.assigned,
                capture: Vec::new(),
                format: 2,
            });
        }
        match crate::encoding::from_bytes::<BundleV1>(WHAT, bytes) {
            Ok(v1) => Ok(Self {
                assignments: v1.assignments,
                rotations: v1.rotations,
                format: 1,
                ..Self::default()
            }),
            // The newest format's complaint is the useful one.
            Err(_) => Err(v3),
        }
    }
}

/// "Device `device`: close telemetry windows every `window_secs` until `expires_at`."
///
/// The hub sends it to a baking wave's devices and an equal baseline sample, so a bake judges
/// minutes of telemetry, not hours. Signed like an assignment (the hub key under the root's
/// delegation); `serial` comes from the same counter, so a replayed older instruction is
/// refused; `expires_at` returns a device to its own window if the hub stops renewing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowInstruction {
    pub device: String,
    pub window_secs: u64,
    /// Why, for logs and status (`rollout 4 wave 2`).
    pub reason: String,
    pub serial: u64,
    pub issued_at: u64,
    pub expires_at: u64,
}

/// "Device `device` is assigned exactly `models`" (as of `issued_at`, until `expires_at`).
///
/// An agent stops serving, after its grace period, a model this set does not name; it never
/// removes on the bundle's list alone. Signed like an assignment; `serial` from the same
/// counter, so an older set (a replayed retained message) is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedSet {
    pub device: String,
    pub models: Vec<String>,
    pub serial: u64,
    pub issued_at: u64,
    pub expires_at: u64,
}

impl Document for AssignedSet {
    const KIND: &'static str = "assigned-set";
    const WHAT: &'static str = "assigned model set";
}

impl AssignedSet {
    /// Checks what a device must check beyond the signature: for it, fresh.
    pub fn validate_for(&self, device: &str, now: u64) -> Result<()> {
        if self.device != device {
            return Err(crate::Error::Instruction(format!(
                "the assigned set is for device {}, not {device}",
                self.device
            )));
        }
        if now >= self.expires_at {
            return Err(crate::Error::Instruction(format!(
                "the assigned set expired at {} (now {now})",
                self.expires_at
            )));
        }
        for m in &self.models {
            name::validate(m)?;
        }
        Ok(())
    }
}

/// The shortest and longest windows an instruction may ask for.
pub const INSTRUCTED_WINDOW_SECS: std::ops::RangeInclusive<u64> = 5..=3600;

impl Document for WindowInstruction {
    const KIND: &'static str = "window-instruction";
    const WHAT: &'static str = "telemetry window instruction";
}

impl WindowInstruction {
    /// Checks what a device must check beyond the signature: for it, fresh, in range.
    pub fn validate_for(&self, device: &str, now: u64) -> Result<()> {
        let bad = |why: String| Err(crate::Error::Instruction(why));
        if self.device != device {
            return bad(format!("it is for device {}, not {device}", self.device));
        }
        if now >= self.expires_at {
            return bad(format!("it expired at {} (now {now})", self.expires_at));
        }
        if !INSTRUCTED_WINDOW_SECS.contains(&self.window_secs) {
            return bad(format!(
                "it asks for {} s windows; allowed {}..={} s",
                self.window_secs,
                INSTRUCTED_WINDOW_SECS.start(),
                INSTRUCTED_WINDOW_SECS.end()
            ));
        }
        Ok(())
    }
}

impl Document for AssignmentBundle {
    const KIND: &'static str = "assignment-bundle";
    const WHAT: &'static str = "assignment bundle";
}

#[cfg(test)]
mod tests {
    use super::valid_time_zone;

    #[test]
    fn time_zone_names_are_checked_for_shape() {
        for ok in [
            "UTC",
            "Europe/Berlin",
            "Etc/GMT-10",
            "America/Port-au-Prince",
            "Etc/GMT+5",
        ] {
            assert!(valid_time_zone(ok), "{ok}");
        }
        let long = "A".repeat(65);
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "Europe/Berlin\n",
            "a b",
            "Zone;rm",
            &long,
        ] {
            assert!(!valid_time_zone(bad), "{bad:?}");
        }
    }
}
