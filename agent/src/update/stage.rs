//! Step 3: a loaded model for the manifest, installed on disk.
//!
//! An installed copy of exactly this manifest is reused. Otherwise the artifact is downloaded
//! to staging, then loaded and smoke-tested there, before anything is installed: a model that
//! fails never reaches `models/`, and its file is dropped so the next try downloads afresh.

use std::path::Path;
use std::time::Duration;

use edgefleet_common::{ModelManifest, Signed};

use super::fault;
use super::fetch::Manifest;
use crate::config::AgentConfig;
use crate::download::{self, Limits};
use crate::error::{AgentError, AgentResult};
use crate::hub_client::HubClient;
use crate::model::LoadedModel;
use crate::state::Layout;

/// Loads one installed version from disk, re-checking the artifact's hash so a damaged file is
/// never served.
pub fn load_installed(layout: &Layout, name: &str, version: u64) -> AgentResult<LoadedModel> {
    let dir = layout.model_dir(name, version);
    let signed: Signed<ModelManifest> =
        Signed::from_bytes(&std::fs::read(dir.join("manifest.bin"))?)?;
    let manifest = signed.decode_unverified()?;
    let bytes = std::fs::read(dir.join("model.onnx"))?;
    if edgefleet_common::Digest::of(&bytes) != manifest.artifact.sha256 {
        return Err(AgentError::Model {
            name: name.into(),
            version,
            message: "artifact on disk does not match its manifest".into(),
        });
    }
    Ok(LoadedModel::load(manifest, &dir.join("model.onnx"))?)
}

/// The download limits the configuration sets (read per update: they reload without restart).
pub fn limits(config: &AgentConfig) -> Limits {
    Limits {
        min_bytes_per_sec: config.download_min_bytes_per_sec,
        window: Duration::from_secs(config.download_rate_window_secs),
        deadline: Duration::from_secs(config.download_deadline_secs),
        max_bytes: config.max_model_bytes,
    }
}

/// The model `manifest` describes, installed: reused if already on disk, else downloaded,
/// checked in staging and installed.
pub async fn stage(
    layout: &Layout,
    hub: &HubClient,
    limits: &Limits,
    manifest: &Manifest,
    now: u64,
) -> AgentResult<LoadedModel> {
    let m = &manifest.verified;
    let installed = load_installed(layout, &m.name, m.version)
        .ok()
        .filter(|l| l.manifest == *m);
    if let Some(l) = installed {
        return Ok(l);
    }
    let url = hub.url(&format!(
        "models/{}/versions/{}/artifact",
        m.name, m.version
    ));
    let file = download::fetch(hub, now, &url, &layout.staging(), &m.artifact, limits).await?;
    let staged = load_staged(m, &file).await?;
    fault("abort-before-install");
    layout.install(&manifest.signed, m, &file)?;
    Ok(staged)
}

/// Loads and smoke-tests the downloaded file, off the async workers (a big model takes a
/// while); a file that fails is removed.
async fn load_staged(m: &ModelManifest, file: &Path) -> AgentResult<LoadedModel> {
    let (m2, f2) = (m.clone(), file.to_path_buf());
    let staged = tokio::task::spawn_blocking(move || -> AgentResult<LoadedModel> {
        let l = LoadedModel::load(m2, &f2)?;
        l.smoke_test()?;
        Ok(l)
    })
    .await
    .map_err(|e| AgentError::Other(format!("loader panicked: {e}")))?;
    if staged.is_err() {
        // A bad artifact will stay bad: drop it so the next try re-downloads.
        let _ = std::fs::remove_file(file);
    }
    staged
}
