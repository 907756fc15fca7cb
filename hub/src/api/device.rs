//! Devices: enrollment, approval, sessions, desired state and status reports.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use edgefleet_common::device::{AssignmentBundle, DeviceStatus, EnrollRequest, SessionProof};
use edgefleet_common::encoding::{self, Document};
use edgefleet_common::{Assignment, Digest, Signed, Target, name};
use serde::Deserialize;

use super::{Admin, DeviceSession, SharedState};
use crate::error::{HubError, HubResult};
use crate::store::{DesiredRecord, DeviceRecord, resolve_desired};

/// `POST /api/v1/enroll` with a postcard `Signed<EnrollRequest>` self-signed by the device key.
pub async fn enroll(
    State(s): State<SharedState>,
    body: Bytes,
) -> HubResult<(StatusCode, Json<serde_json::Value>)> {
    let signed = Signed::<EnrollRequest>::from_bytes(&body)?;
    let req = signed.decode_unverified()?;
    // Self-signed: the signer must be the key being enrolled, which proves possession.
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
        &s.loaded.load().config.enrollment_token,
        &req.enrollment_token,
    ) {
        (Some(want), Some(got)) => Digest::of(want.as_bytes()) == Digest::of(got.as_bytes()),
        _ => false,
    };
    if req.enrollment_token.is_some() && !token_ok {
        return Err(HubError::Forbidden("wrong enrollment token".into()));
    }
    let approved = match s.store.device(&req.device_id)? {
        Some(existing) if existing.public_key != req.public_key => {
            return Err(HubError::Conflict(format!(
                "device id {} is enrolled with another key; an admin must remove it first",
                req.device_id
            )));
        }
        Some(existing) => {
            let approved = existing.approved || token_ok;
            s.store.put_device(&DeviceRecord {
                tags: req.tags.clone(),
                hostname: req.hostname.clone(),
                agent_version: req.agent_version.clone(),
                approved,
                ..existing
            })?;
            approved
        }
        None => {
            s.store.put_device(&DeviceRecord {
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
    s.store.flush().await?;
    if approved {
        // An approved device gets its assignments pushed (retained on MQTT).
        s.changed();
    }
    Ok((
        StatusCode::OK,
        Json(serde_json::json!({"device_id": req.device_id, "approved": approved})),
    ))
}

pub async fn approve(
    _: Admin,
    State(s): State<SharedState>,
    Path(id): Path<String>,
) -> HubResult<Json<DeviceRecord>> {
    name::validate(&id)?;
    let mut d = s
        .store
        .device(&id)?
        .ok_or_else(|| HubError::NotFound(format!("no device {id:?}")))?;
    d.approved = true;
    s.store.put_device(&d)?;
    s.store.flush().await?;
    s.changed();
    tracing::info!(device = %id, "device approved");
    Ok(Json(d))
}

pub async fn list_devices(
    _: Admin,
    State(s): State<SharedState>,
) -> HubResult<Json<Vec<DeviceRecord>>> {
    Ok(Json(s.store.devices()?))
}

pub async fn get_device(
    _: Admin,
    State(s): State<SharedState>,
    Path(id): Path<String>,
) -> HubResult<Json<super::fleet::DeviceDetail>> {
    name::validate(&id)?;
    let device = s
        .store
        .device(&id)?
        .ok_or_else(|| HubError::NotFound(format!("no device {id:?}")))?;
    Ok(Json(super::fleet::device_detail(&s, device)?))
}

#[derive(Deserialize)]
pub struct ChallengeRequest {
    device_id: String,
}

/// `POST /api/v1/device/challenge`: a single-use nonce for an approved device.
pub async fn challenge(
    State(s): State<SharedState>,
    Json(req): Json<ChallengeRequest>,
) -> HubResult<Json<serde_json::Value>> {
    name::validate(&req.device_id)?;
    let d = s.store.device(&req.device_id)?.ok_or_else(|| {
        HubError::NotFound(format!(
            "device {} is not enrolled; enroll it first",
            req.device_id
        ))
    })?;
    if !d.approved {
        return Err(HubError::Forbidden(format!(
            "device {} is waiting for approval (`edgefleet approve {}`)",
            d.id, d.id
        )));
    }
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(|e| HubError::Internal(e.to_string()))?;
    s.store.put_challenge(&nonce, &d.id, crate::now() + 120)?;
    Ok(Json(serde_json::json!({ "nonce": hex::encode(nonce) })))
}

/// `POST /api/v1/device/session` with a postcard `Signed<SessionProof>` over the nonce.
pub async fn session(
    State(s): State<SharedState>,
    body: Bytes,
) -> HubResult<Json<serde_json::Value>> {
    let signed = Signed::<SessionProof>::from_bytes(&body)?;
    let proof = signed.decode_unverified()?;
    let challenge = s
        .store
        .take_challenge(&proof.nonce)?
        .filter(|c| c.device_id == proof.device_id && c.expires_at > crate::now())
        .ok_or_else(|| {
            HubError::Unauthorized("unknown or expired challenge; ask for a new one".into())
        })?;
    let device = s
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
        return Err(HubError::Unauthorized(
            "challenge not signed by the enrolled device key".into(),
        ));
    }
    let mut token = [0u8; 32];
    getrandom::fill(&mut token).map_err(|e| HubError::Internal(e.to_string()))?;
    let token = hex::encode(token);
    let ttl = s.loaded.load().config.session_ttl_secs;
    s.store.put_session(
        &Digest::of(token.as_bytes()),
        &device.id,
        crate::now() + ttl,
    )?;
    let _ = s.store.purge_expired(crate::now());
    Ok(Json(
        serde_json::json!({ "token": token, "expires_in": ttl }),
    ))
}

#[derive(Deserialize)]
pub struct AssignRequest {
    pub target: Target,
    pub model: String,
    pub version: u64,
}

/// `POST /api/v1/assignments`: sets desired state for a device or a tag.
pub async fn assign(
    _: Admin,
    State(s): State<SharedState>,
    Json(req): Json<AssignRequest>,
) -> HubResult<Json<DesiredRecord>> {
    name::validate(&req.model)?;
    match &req.target {
        Target::Device(d) | Target::Tag(d) => name::validate(d)?,
    }
    if s.store.model(&req.model, req.version)?.is_none() {
        return Err(HubError::NotFound(format!(
            "model {} has no version {}; push it first",
            req.model, req.version
        )));
    }
    // Refuse up front what the hub could not sign, rather than failing on every device poll.
    let delegation = s.loaded.load().delegation.decode_unverified()?;
    if !delegation
        .patterns
        .iter()
        .any(|p| name::pattern_matches(p, &req.model))
        || !delegation
            .permissions
            .contains(&edgefleet_common::Permission::Assignments)
    {
        return Err(HubError::Forbidden(format!(
            "the hub's delegation ({:?}) does not allow assigning {}; delegate it with `edgefleet delegate --permission assignments`",
            delegation.patterns, req.model
        )));
    }
    let record = DesiredRecord {
        target: req.target,
        model: req.model,
        version: req.version,
        set_at: crate::now(),
    };
    s.store.set_desired(&record)?;
    s.store.flush().await?;
    s.changed();
    tracing::info!(target = %record.target, model = %record.model, version = record.version, "desired state set");
    Ok(Json(record))
}

pub async fn list_desired(
    _: Admin,
    State(s): State<SharedState>,
) -> HubResult<Json<Vec<DesiredRecord>>> {
    Ok(Json(s.store.desired()?))
}

/// Builds the device's signed assignments, reusing issued ones while they still match and are
/// fresh, so the bundle's bytes (and so its ETag) only change when something changed.
pub(crate) fn bundle_for(s: &SharedState, device: &DeviceRecord) -> HubResult<AssignmentBundle> {
    // A poisoned lock only means another issuer panicked; the store is transactional.
    let _issuing = s.issuing.lock().unwrap_or_else(|p| p.into_inner());
    let now = crate::now();
    // One snapshot: every assignment of the bundle is signed under the same keys and settings.
    let loaded = s.loaded.load();
    let ttl = loaded.config.assignment_ttl_secs;
    let mut out = Vec::new();
    for want in resolve_desired(&s.store.desired()?, device) {
        let Some(model) = s.store.model(&want.name, want.version)? else {
            continue;
        };
        let digest = model.manifest.digest();
        if let Some(prev) = s.store.issued(&device.id, &want.name)? {
            let a = prev.decode_unverified()?;
            if a.version == want.version
                && a.manifest_digest == digest
                && a.expires_at > now + ttl / 2
            {
                out.push(prev);
                continue;
            }
        }
        let a = Assignment {
            target: Target::Device(device.id.clone()),
            model: want.name.clone(),
            version: want.version,
            manifest_digest: digest,
            serial: s.store.next_serial()?,
            issued_at: now,
            expires_at: now + ttl,
        };
        let signed = Signed::sign(&a, &loaded.signing_key, Some(loaded.delegation.clone()))?;
        s.store.put_issued(&device.id, &signed)?;
        out.push(signed);
    }
    Ok(AssignmentBundle {
        assignments: out,
        rotations: loaded.rotations.clone(),
    })
}

#[derive(Deserialize)]
pub struct WaitQuery {
    /// Long-poll: wait up to this many seconds (max 60) for a change if the ETag still matches.
    wait: Option<u64>,
}

/// `GET /api/v1/device/assignments`: postcard `AssignmentBundle`, with ETag / If-None-Match.
pub async fn device_assignments(
    dev: DeviceSession,
    State(s): State<SharedState>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
) -> HubResult<Response> {
    let mut changes = s.changes.subscribe();
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_secs(q.wait.unwrap_or(0).min(60));
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    loop {
        // Mark the current generation seen before computing, so a change made while we compute
        // wakes the wait below instead of being missed.
        changes.borrow_and_update();
        let device = s
            .store
            .device(&dev.device_id)?
            .ok_or_else(|| HubError::NotFound("device record vanished".into()))?;
        let bytes = encoding::to_bytes(&bundle_for(&s, &device)?)?;
        let etag = format!("\"{}\"", Digest::of(&bytes));
        if if_none_match.as_deref() != Some(etag.as_str()) {
            return Ok((
                [
                    (header::ETAG, etag),
                    (header::CONTENT_TYPE, "application/octet-stream".into()),
                ],
                bytes,
            )
                .into_response());
        }
        if s.is_stopping() {
            return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
        }
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
        }
    }
}

/// `POST /api/v1/device/status`: the agent's report after each update attempt.
pub async fn report_status(
    dev: DeviceSession,
    State(s): State<SharedState>,
    Json(status): Json<DeviceStatus>,
) -> HubResult<Json<serde_json::Value>> {
    if status.last_error.as_ref().is_some_and(|e| e.len() > 4096) || status.active.len() > 256 {
        return Err(HubError::BadRequest("status report too large".into()));
    }
    let mut d = s
        .store
        .device(&dev.device_id)?
        .ok_or_else(|| HubError::NotFound("device record vanished".into()))?;
    if let Some(err) = &status.last_error {
        tracing::warn!(device = %d.id, error = %err, "device reports an update failure");
    }
    d.last_seen = Some(crate::now());
    d.status = Some(status);
    s.store.put_device(&d)?;
    Ok(Json(serde_json::json!({"ok": true})))
}
