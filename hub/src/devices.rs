//! Devices: enrollment, approval, sessions, status reports and `last_seen`.
//!
//! Rules:
//! - an enrollment request is self-signed by the key it enrolls (proof of possession); a
//!   device id enrolled with another key is refused until an admin removes it;
//! - a device is approved by an admin, or at once when it presents the hub's enrollment token;
//! - a session is opened by signing a single-use, short-lived hub challenge with the enrolled
//!   key, and only for an approved device; the hub keeps only the token's hash.

use edgefleet_common::device::{DeviceStatus, EnrollRequest, SessionProof};
use edgefleet_common::encoding::{self, Document};
use edgefleet_common::{Digest, Signed, name};
use serde::Serialize;

use crate::config::SharedConfig;
use crate::error::{HubError, HubResult};
use crate::store::{DeviceRecord, Store};

/// How long a challenge may be answered.
const CHALLENGE_TTL_SECS: u64 = 120;
/// `last_seen` is written at most this often per device (every message would be a write).
const TOUCH_EVERY_SECS: u64 = 30;

#[derive(Clone)]
pub struct Devices {
    store: Store,
    config: SharedConfig,
}

#[derive(Debug, Serialize)]
pub struct Enrolled {
    pub device_id: String,
    pub approved: bool,
}

#[derive(Debug, Serialize)]
pub struct Session {
    pub token: String,
    pub expires_in: u64,
}

fn random_bytes() -> HubResult<[u8; 32]> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| HubError::Internal(e.to_string()))?;
    Ok(bytes)
}

impl Devices {
    pub fn new(store: Store, config: SharedConfig) -> Self {
        Self { store, config }
    }

    /// Enrolls (or re-enrolls) a device from its self-signed request (postcard bytes);
    /// durable on return.
    pub async fn enroll(&self, body: &[u8]) -> HubResult<Enrolled> {
        let signed = Signed::<EnrollRequest>::from_bytes(body)?;
        let req = signed.decode_unverified()?;
        if signed.signer != req.public_key
            || !req.public_key.verify(
                &encoding::signing_bytes(EnrollRequest::KIND, &signed.body),
                &signed.signature,
            )
        {
            return Err(HubError::Forbidden(
                "enrollment request is not signed by the key it enrolls".into(),
            ));
        }
        req.validate()?;
        let token_ok = match (
            &self.config.load().config.enrollment_token,
            &req.enrollment_token,
        ) {
            // Comparing digests keeps the comparison independent of where the strings differ.
            (Some(want), Some(got)) => Digest::of(want.as_bytes()) == Digest::of(got.as_bytes()),
            _ => false,
        };
        if req.enrollment_token.is_some() && !token_ok {
            return Err(HubError::Forbidden("wrong enrollment token".into()));
        }
        let approved = match self.store.device(&req.device_id)? {
            Some(existing) if existing.public_key != req.public_key => {
                return Err(HubError::Conflict(format!(
                    "device id {} is enrolled with another key; an admin must remove it first",
                    req.device_id
                )));
            }
            Some(existing) => {
                let approved = existing.approved || token_ok;
                self.store.put_device(&DeviceRecord {
                    tags: req.tags.clone(),
                    hostname: req.hostname.clone(),
                    agent_version: req.agent_version.clone(),
                    approved,
                    ..existing
                })?;
                approved
            }
            None => {
                self.store.put_device(&DeviceRecord {
                    id: req.device_id.clone(),
                    public_key: req.public_key,
                    tags: req.tags.clone(),
                    hostname: req.hostname.clone(),
                    agent_version: req.agent_version.clone(),
                    approved: token_ok,
                    enrolled_at: crate::now(),
                    last_seen: None,
                    status: None,
                })?;
                tracing::info!(device = %req.device_id, approved = token_ok, "device enrolled");
                token_ok
            }
        };
        self.store.flush().await?;
        Ok(Enrolled {
            device_id: req.device_id,
            approved,
        })
    }

    /// Approves an enrolled device; durable on return.
    pub async fn approve(&self, id: &str) -> HubResult<DeviceRecord> {
        let mut d = self.require(id)?;
        d.approved = true;
        self.store.put_device(&d)?;
        self.store.flush().await?;
        tracing::info!(device = %id, "device approved");
        Ok(d)
    }

    pub fn list(&self) -> HubResult<Vec<DeviceRecord>> {
        self.store.devices()
    }

    pub fn get(&self, id: &str) -> HubResult<Option<DeviceRecord>> {
        self.store.device(id)
    }

    /// The device `id` as a caller names it: validated, and `NotFound` when not enrolled.
    pub fn require(&self, id: &str) -> HubResult<DeviceRecord> {
        name::validate(id)?;
        self.store
            .device(id)?
            .ok_or_else(|| HubError::NotFound(format!("no device {id:?}")))
    }

    /// A single-use nonce (hex) for an approved device to sign.
    pub fn challenge(&self, device_id: &str) -> HubResult<String> {
        name::validate(device_id)?;
        let d = self.store.device(device_id)?.ok_or_else(|| {
            HubError::NotFound(format!(
                "device {device_id} is not enrolled; enroll it first"
            ))
        })?;
        if !d.approved {
            return Err(HubError::Forbidden(format!(
                "device {} is waiting for approval (`edgefleet approve {}`)",
                d.id, d.id
            )));
        }
        let nonce = random_bytes()?;
        self.store
            .put_challenge(&nonce, &d.id, crate::now() + CHALLENGE_TTL_SECS)?;
        Ok(hex::encode(nonce))
    }

    /// Opens a session from a signed answer to a challenge (postcard `Signed<SessionProof>`).
    pub fn open_session(&self, body: &[u8]) -> HubResult<Session> {
        let signed = Signed::<SessionProof>::from_bytes(body)?;
        let proof = signed.decode_unverified()?;
        let challenge = self
            .store
            .take_challenge(&proof.nonce)?
            .filter(|c| c.device_id == proof.device_id && c.expires_at > crate::now())
            .ok_or_else(|| {
                HubError::Unauthenticated("unknown or expired challenge; ask for a new one".into())
            })?;
        let device = self
            .store
            .device(&challenge.device_id)?
            .filter(|d| d.approved)
            .ok_or_else(|| HubError::Forbidden("device is not approved".into()))?;
        if signed.signer != device.public_key
            || !device.public_key.verify(
                &encoding::signing_bytes(SessionProof::KIND, &signed.body),
                &signed.signature,
            )
        {
            return Err(HubError::Unauthenticated(
                "challenge not signed by the enrolled device key".into(),
            ));
        }
        let token = hex::encode(random_bytes()?);
        let ttl = self.config.load().config.session_ttl_secs;
        self.store.put_session(
            &Digest::of(token.as_bytes()),
            &device.id,
            crate::now() + ttl,
        )?;
        let _ = self.store.purge_expired(crate::now());
        Ok(Session {
            token,
            expires_in: ttl,
        })
    }

    /// The device a session token belongs to, while the session lasts.
    pub fn session_device(&self, token: &str) -> HubResult<String> {
        match self.store.session(&Digest::of(token.trim().as_bytes()))? {
            Some(rec) if rec.expires_at > crate::now() => Ok(rec.device_id),
            _ => Err(HubError::Unauthenticated(
                "session expired or unknown; open a new one".into(),
            )),
        }
    }

    /// Stores the agent's report after an update attempt (bounded: it is the device's input).
    /// Returns the bundle format the previous report declared.
    pub fn report_status(&self, id: &str, status: DeviceStatus) -> HubResult<u32> {
        let long_name = |m: &edgefleet_common::device::ModelRef| m.name.len() > 256;
        if status.last_error.as_ref().is_some_and(|e| e.len() > 4096)
            || status.agent_version.len() > 256
            || status.active.len() > 256
            || status.previous.len() > 256
            || status.active.iter().chain(&status.previous).any(long_name)
            || status.installs.len() > 256
            || status
                .installs
                .iter()
                .any(|i| i.model.len() > 256 || i.reason.as_ref().is_some_and(|r| r.len() > 4096))
        {
            return Err(HubError::Invalid(
                "status report too large: at most 256 models, names of 256 bytes and errors of 4096".into(),
            ));
        }
        if let Some(zone) = &status.time_zone
            && !edgefleet_common::device::valid_time_zone(zone)
        {
            return Err(HubError::Invalid(format!(
                "status report: time_zone {:?} is not an IANA zone name (letters, digits, '/', '_', '-', '+', at most 64 bytes)",
                zone.chars().take(80).collect::<String>()
            )));
        }
        let mut d = self
            .store
            .device(id)?
            .ok_or_else(|| HubError::NotFound("device record vanished".into()))?;
        if let Some(err) = &status.last_error {
            tracing::warn!(device = %d.id, error = %err, "device reports an update failure");
        }
        d.last_seen = Some(crate::now());
        let format_before = d.status.as_ref().map_or(0, |s| s.bundle_format);
        d.status = Some(status);
        self.store.put_device(&d)?;
        Ok(format_before)
    }

    /// Notes that the device was heard from at `now` (written at most every 30 s).
    pub fn touch(&self, device: &DeviceRecord, now: u64) {
        if device.last_seen.is_some_and(|t| t + TOUCH_EVERY_SECS > now) {
            return;
        }
        if let Err(error) = self.store.touch_device(&device.id, now) {
            tracing::warn!(%error, device = %device.id, "cannot update last_seen");
        }
    }
}
