//! Artifact download: resumable across restarts, capped, and defended against slow retrieval.
//!
//! The partial file is `staging/<sha256>.part`. A restart finds it and asks for the rest with
//! `Range: bytes=N-` and `If-Range: "<sha256>"` (the hub's ETag is the artifact's hash). Bytes
//! beyond the manifest's size abort the download; so does a rate under the minimum over any
//! window (`download_rate_window_secs`, default 10 s), or the overall deadline. Nothing leaves staging before its SHA-256 matches.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edgefleet_common::digest::Hasher;
use edgefleet_common::{ArtifactRef, Digest};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{AgentError, AgentResult};
use crate::hub_client::HubClient;

pub struct Limits {
    pub min_bytes_per_sec: u64,
    /// The rate is judged over windows of this length (and a window with no data at all fails).
    pub window: Duration,
    pub deadline: Duration,
    pub max_bytes: u64,
}

/// Test-only fault point: abort the process once this many bytes are on disk.
fn abort_after() -> Option<u64> {
    std::env::var("EDGEFLEET_AGENT_FAULT")
        .ok()?
        .strip_prefix("abort-download-after:")?
        .parse()
        .ok()
}

pub fn part_path(staging: &Path, sha: &Digest) -> PathBuf {
    staging.join(format!("{sha}.part"))
}

/// Downloads the artifact to staging and returns the verified file's path.
pub async fn fetch(
    hub: &HubClient,
    now: u64,
    url: &str,
    staging: &Path,
    artifact: &ArtifactRef,
    limits: &Limits,
) -> AgentResult<PathBuf> {
    if artifact.size > limits.max_bytes {
        return Err(AgentError::Download(format!(
            "artifact is {} bytes, over this device's max_model_bytes ({})",
            artifact.size, limits.max_bytes
        )));
    }
    let part = part_path(staging, &artifact.sha256);
    match tokio::time::timeout(
        limits.deadline,
        transfer(hub, now, url, &part, artifact, limits),
    )
    .await
    {
        Ok(r) => r?,
        Err(_) => {
            return Err(AgentError::Download(format!(
                "not finished within the {}s deadline (download_deadline_secs); will resume",
                limits.deadline.as_secs()
            )));
        }
    }
    // Verify what is on disk, whichever sessions wrote it.
    let mut file = tokio::fs::File::open(&part).await?;
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    let got = hasher.finish();
    if got != artifact.sha256 || size != artifact.size {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(AgentError::Download(format!(
            "artifact hash mismatch: got {got} ({size} bytes), the signed manifest says {} ({} bytes); discarded",
            artifact.sha256, artifact.size
        )));
    }
    Ok(part)
}

/// Brings `part` up to the artifact's size: resumes what is on disk, or starts over.
async fn transfer(
    hub: &HubClient,
    now: u64,
    url: &str,
    part: &Path,
    artifact: &ArtifactRef,
    limits: &Limits,
) -> AgentResult<()> {
    let have = resume_point(part, artifact).await?;
    if have == artifact.size {
        return Ok(());
    }
    let resp = request(hub, now, url, have, artifact).await?;
    let (file, have) = open_part(&resp, part, have, artifact).await?;
    receive(resp, file, have, part, artifact, limits).await
}

/// Bytes already on disk from an earlier session (a file longer than the artifact is
/// discarded).
async fn resume_point(part: &Path, artifact: &ArtifactRef) -> AgentResult<u64> {
    let have = tokio::fs::metadata(part)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    if have > artifact.size {
        tokio::fs::remove_file(part).await?;
        return Ok(0);
    }
    Ok(have)
}

/// Asks for the artifact from byte `have` on: `If-Range` makes the hub send the whole file
/// instead if it no longer has this hash.
async fn request(
    hub: &HubClient,
    now: u64,
    url: &str,
    have: u64,
    artifact: &ArtifactRef,
) -> AgentResult<reqwest::Response> {
    let etag = format!("\"{}\"", artifact.sha256);
    hub.authed(now, |t| {
        let mut r = hub.http.get(url).bearer_auth(t);
        if have > 0 {
            r = r
                .header(reqwest::header::RANGE, format!("bytes={have}-"))
                .header(reqwest::header::IF_RANGE, &etag);
        }
        r
    })
    .await
}

/// Opens `part` for what the hub answered: appended to for the rest of it, truncated for the
/// whole file. Returns the file and the bytes it already holds.
async fn open_part(
    resp: &reqwest::Response,
    part: &Path,
    have: u64,
    artifact: &ArtifactRef,
) -> AgentResult<(tokio::fs::File, u64)> {
    match resp.status() {
        StatusCode::PARTIAL_CONTENT if have > 0 => {
            let start = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            if start != Some(have) {
                tokio::fs::remove_file(part).await?;
                return Err(AgentError::Download(format!(
                    "hub answered a range not starting at {have}; restarting"
                )));
            }
            tracing::info!(resume_at = have, size = artifact.size, "resuming download");
            let file = tokio::fs::OpenOptions::new()
                .append(true)
                .open(part)
                .await?;
            Ok((file, have))
        }
        StatusCode::OK => Ok((tokio::fs::File::create(part).await?, 0)),
        StatusCode::RANGE_NOT_SATISFIABLE => {
            tokio::fs::remove_file(part).await?;
            Err(AgentError::Download(
                "hub refused the resume range; restarting".into(),
            ))
        }
        s => Err(AgentError::Download(format!(
            "hub answered {s} for the artifact"
        ))),
    }
}

/// Writes the body to `file` (holding `have` bytes already), enforcing the size cap and the
/// slow-retrieval defence.
async fn receive(
    mut resp: reqwest::Response,
    mut file: tokio::fs::File,
    mut have: u64,
    part: &Path,
    artifact: &ArtifactRef,
    limits: &Limits,
) -> AgentResult<()> {
    let fault = abort_after();
    let mut window_start = Instant::now();
    let mut window_bytes = 0u64;
    loop {
        // A stalled connection yields nothing: the window check must not wait for a chunk forever.
        let chunk = match tokio::time::timeout(limits.window, resp.chunk()).await {
            Ok(c) => c?,
            Err(_) => {
                return Err(AgentError::Download(format!(
                    "no data for {}s (slow-retrieval defence); will resume",
                    limits.window.as_secs()
                )));
            }
        };
        let Some(chunk) = chunk else { break };
        if have + chunk.len() as u64 > artifact.size {
            drop(file);
            tokio::fs::remove_file(part).await?;
            return Err(AgentError::Download(format!(
                "the hub sent more than the {} bytes the signed manifest allows; discarded",
                artifact.size
            )));
        }
        if let Err(e) = file.write_all(&chunk).await {
            drop(file);
            if e.kind() == std::io::ErrorKind::StorageFull {
                // Give the space back so state files can still be written; the download starts
                // over once there is room.
                let _ = tokio::fs::remove_file(part).await;
                return Err(AgentError::Download(format!(
                    "disk full after {have} of {} bytes ({e}); partial download discarded, will retry",
                    artifact.size
                )));
            }
            return Err(e.into());
        }
        have += chunk.len() as u64;
        window_bytes += chunk.len() as u64;
        if let Some(limit) = fault
            && have >= limit
        {
            file.sync_all().await?;
            tracing::error!(have, "fault injection: aborting mid-download");
            std::process::abort();
        }
        let elapsed = window_start.elapsed();
        if elapsed >= limits.window {
            let rate = window_bytes as f64 / elapsed.as_secs_f64();
            if rate < limits.min_bytes_per_sec as f64 {
                file.sync_all().await?;
                return Err(AgentError::Download(format!(
                    "download too slow: {rate:.0} B/s over {}s, minimum {} B/s (download_min_bytes_per_sec); will resume",
                    elapsed.as_secs(),
                    limits.min_bytes_per_sec
                )));
            }
            window_start = Instant::now();
            window_bytes = 0;
        }
    }
    file.sync_all().await?;
    if have != artifact.size {
        return Err(AgentError::Download(format!(
            "connection closed at {have} of {} bytes; will resume",
            artifact.size
        )));
    }
    Ok(())
}
