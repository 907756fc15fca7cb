//! The agent's side of the hub API: enrollment, sessions, assignments, manifests, status.

use std::time::Duration;

use edgefleet_common::device::{
    AssignmentBundle, BUNDLE_FORMAT, BUNDLE_FORMAT_HEADER, DeviceStatus, EnrollRequest,
    SessionProof,
};
use edgefleet_common::{ModelManifest, SecretKey, Signed};
use reqwest::StatusCode;
use tokio::sync::Mutex;

use crate::config::AgentConfig;
use crate::error::{AgentError, AgentResult};

/// Bounds on what the hub may send us (TUF-style caps against endless data).
pub const MAX_BUNDLE_BYTES: usize = 1024 * 1024;
pub const MAX_MANIFEST_BYTES: usize = 16 * 1024 * 1024;

pub struct HubClient {
    pub http: reqwest::Client,
    base: String,
    device_id: String,
    tags: Vec<String>,
    enrollment_token: Option<String>,
    key: SecretKey,
    session: Mutex<Option<String>>,
    etag: Mutex<Option<String>>,
}

/// Result of polling for assignments.
pub enum Poll {
    Changed(Box<AssignmentBundle>),
    Unchanged,
}

async fn error_of(resp: reqwest::Response) -> AgentError {
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let msg = body
        .get("error")
        .and_then(|e| e.as_str())
        .unwrap_or("no details")
        .to_owned();
    AgentError::Hub(format!("{status}: {msg}"))
}

/// Reads a body with a hard size cap.
pub async fn read_capped(mut resp: reqwest::Response, cap: usize) -> AgentResult<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len() + chunk.len() > cap {
            return Err(AgentError::Hub(format!(
                "response over the {cap}-byte limit"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

impl HubClient {
    pub fn new(config: &AgentConfig, key: SecretKey) -> AgentResult<Self> {
        Ok(Self::with_http(config, key, Self::http_client()?))
    }

    /// The HTTP client [`HubClient::new`] builds: connect timeout, user agent, rustls `ring`.
    pub fn http_client() -> AgentResult<reqwest::Client> {
        crate::install_crypto_provider();
        Ok(reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("edgefleet-agent/", env!("CARGO_PKG_VERSION")))
            .build()?)
    }

    /// A client on an HTTP client shared with others (its connection pool with it): the fleet
    /// simulator runs thousands of devices in one process.
    pub fn with_http(config: &AgentConfig, key: SecretKey, http: reqwest::Client) -> Self {
        Self {
            http,
            base: config.hub_url.trim_end_matches('/').to_owned(),
            device_id: config.device_id.clone(),
            tags: config.tags.clone(),
            enrollment_token: config.enrollment_token.clone(),
            key,
            session: Mutex::new(None),
            etag: Mutex::new(None),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.base)
    }

    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// Enrolls (idempotent) and opens a session. Returns the token.
    async fn open_session(&self, now: u64) -> AgentResult<String> {
        let req = EnrollRequest {
            device_id: self.device_id.clone(),
            public_key: self.key.public(),
            tags: self.tags.clone(),
            hostname: std::fs::read_to_string("/etc/hostname")
                .unwrap_or_default()
                .trim()
                .chars()
                .take(64)
                .collect(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            enrollment_token: self.enrollment_token.clone(),
            requested_at: now,
        };
        let body = Signed::sign(&req, &self.key, None)?.to_bytes()?;
        let resp = self
            .http
            .post(self.url("enroll"))
            .timeout(Duration::from_secs(30))
            .body(body)
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        let resp = self
            .http
            .post(self.url("device/challenge"))
            .timeout(Duration::from_secs(30))
            .json(&serde_json::json!({"device_id": self.device_id}))
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        let v: serde_json::Value = resp.json().await?;
        let nonce = v["nonce"]
            .as_str()
            .and_then(|n| hex::decode(n).ok())
            .ok_or_else(|| AgentError::Hub("challenge without a nonce".into()))?;
        let proof = Signed::sign(
            &SessionProof {
                device_id: self.device_id.clone(),
                nonce,
            },
            &self.key,
            None,
        )?;
        let resp = self
            .http
            .post(self.url("device/session"))
            .timeout(Duration::from_secs(30))
            .body(proof.to_bytes()?)
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        let v: serde_json::Value = resp.json().await?;
        let token = v["token"]
            .as_str()
            .ok_or_else(|| AgentError::Hub("session without a token".into()))?
            .to_owned();
        tracing::info!(device = %self.device_id, "session opened with the hub");
        Ok(token)
    }

    async fn token(&self, now: u64) -> AgentResult<String> {
        let mut s = self.session.lock().await;
        if let Some(t) = s.as_ref() {
            return Ok(t.clone());
        }
        let t = self.open_session(now).await?;
        *s = Some(t.clone());
        Ok(t)
    }

    async fn forget_session(&self) {
        *self.session.lock().await = None;
    }

    /// Sends an authenticated request, re-opening the session once on 401.
    pub async fn authed(
        &self,
        now: u64,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> AgentResult<reqwest::Response> {
        for attempt in 0..2 {
            let token = self.token(now).await?;
            let resp = build(&token).send().await?;
            if resp.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                self.forget_session().await;
                continue;
            }
            return Ok(resp);
        }
        Err(AgentError::Hub("session refused twice".into()))
    }

    /// Long-polls for assignments (ETag / If-None-Match, `wait` seconds).
    pub async fn poll(&self, now: u64, wait: u64) -> AgentResult<Poll> {
        let etag = self.etag.lock().await.clone();
        let url = format!("{}?wait={wait}", self.url("device/assignments"));
        let resp = self
            .authed(now, |t| {
                let mut r = self
                    .http
                    .get(&url)
                    .bearer_auth(t)
                    .timeout(Duration::from_secs(wait + 30));
                if let Some(e) = &etag {
                    r = r.header(reqwest::header::IF_NONE_MATCH, e);
                }
                r.header(BUNDLE_FORMAT_HEADER, BUNDLE_FORMAT.to_string())
            })
            .await?;
        match resp.status() {
            StatusCode::NOT_MODIFIED => Ok(Poll::Unchanged),
            s if s.is_success() => {
                let new_etag = resp
                    .headers()
                    .get(reqwest::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let bytes = read_capped(resp, MAX_BUNDLE_BYTES).await?;
                let bundle = AssignmentBundle::from_wire(&bytes)?;
                *self.etag.lock().await = new_etag;
                Ok(Poll::Changed(Box::new(bundle)))
            }
            _ => Err(error_of(resp).await),
        }
    }

    /// Forget the ETag so the next poll returns the bundle again (after a failed apply).
    pub async fn reset_etag(&self) {
        *self.etag.lock().await = None;
    }

    pub async fn manifest(
        &self,
        now: u64,
        name: &str,
        version: u64,
    ) -> AgentResult<Signed<ModelManifest>> {
        let url = self.url(&format!("models/{name}/versions/{version}/manifest"));
        let resp = self
            .authed(now, |t| {
                self.http
                    .get(&url)
                    .bearer_auth(t)
                    .timeout(Duration::from_secs(60))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        let bytes = read_capped(resp, MAX_MANIFEST_BYTES).await?;
        Ok(Signed::from_bytes(&bytes)?)
    }

    pub async fn report(&self, now: u64, status: &DeviceStatus) -> AgentResult<()> {
        let resp = self
            .authed(now, |t| {
                self.http
                    .post(self.url("device/status"))
                    .bearer_auth(t)
                    .timeout(Duration::from_secs(30))
                    .json(status)
            })
            .await?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        Ok(())
    }
}
