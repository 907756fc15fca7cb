//! The model registry: artifacts (content-addressed blobs), signed manifests, versions with
//! their lineage, and the facts read off a version's manifest (its reference profile and the
//! column names its devices profile), decoded once.
//!
//! Rules:
//! - a blob is published under its SHA-256 only when the bytes received hash to it;
//! - a manifest is accepted when it verifies against the pinned root (signature, delegation
//!   scope and expiry), passes the structural checks, its artifact is uploaded with the exact
//!   size, and its version is above every stored version of its name;
//! - a stored version never changes, so what is read off its manifest may be cached forever.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use edgefleet_common::sketch::Profile;
use edgefleet_common::{Digest, Lineage, ModelManifest, Signed, TensorSpec, digest::Hasher, name};
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::config::SharedConfig;
use crate::error::{HubError, HubResult};
use crate::store::{ModelRecord, Store};

/// Versions whose facts stay decoded; past it the cache starts over (a decode is cheap next
/// to the ingest work it saves, but a registry of thousands of versions need not stay in RAM).
const MAX_CACHED_VERSIONS: usize = 256;

/// Facts per (model, version).
type FactsCache = Arc<Mutex<HashMap<(String, u64), Arc<VersionFacts>>>>;

#[derive(Clone)]
pub struct Registry {
    store: Store,
    config: SharedConfig,
    facts: FactsCache,
}

/// What the hub reads off a version's manifest, again and again.
#[derive(Debug)]
pub struct VersionFacts {
    /// The training-data profile, if the manifest carries a readable one.
    pub reference: Option<Profile>,
    /// The columns devices profile for this version, in order (inputs, then outputs).
    pub columns: Vec<String>,
    /// What feedback scores this version's predictions as (none: the model has no outputs).
    pub task: Option<edgefleet_common::quality::Task>,
}

/// A blob upload's outcome.
#[derive(Debug, Serialize)]
pub struct BlobReceived {
    pub sha256: Digest,
    /// Bytes received; absent when the blob was already there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub existing: bool,
}

#[derive(Debug, Serialize)]
pub struct Published {
    pub name: String,
    pub version: u64,
    pub manifest_digest: Digest,
    pub signer: String,
}

/// One version as the registry lists it.
#[derive(Debug, Serialize)]
pub struct VersionInfo {
    pub version: u64,
    pub manifest_digest: Digest,
    pub artifact_sha256: Digest,
    pub artifact_size: u64,
    pub created_at: u64,
    pub uploaded_at: u64,
    pub signer: String,
    pub description: String,
    pub lineage: Lineage,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// A model and its versions, oldest first.
#[derive(Debug, Serialize)]
pub struct ModelVersions {
    pub name: String,
    pub versions: Vec<VersionInfo>,
}

impl Registry {
    pub fn new(store: Store, config: SharedConfig) -> Self {
        Self {
            store,
            config,
            facts: Default::default(),
        }
    }

    /// Receives an artifact under the digest `sha256` (hex) names: streamed to a temp file and
    /// hashed, published under the digest only if the hash matches, refused past
    /// `max_artifact_bytes`. A blob that is already there is not received again.
    pub async fn receive_blob<S, B, E>(&self, sha256: &str, body: S) -> HubResult<BlobReceived>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        let digest = Digest::from_hex(sha256)?;
        if self.store.blob_size(&digest).is_some() {
            return Ok(BlobReceived {
                sha256: digest,
                size: None,
                existing: true,
            });
        }
        let limit = self.config.load().config.max_artifact_bytes;
        let tmp = self.store.tmp_path()?;
        match self.write_blob(&tmp, &digest, limit, body).await {
            Ok(size) => Ok(BlobReceived {
                sha256: digest,
                size: Some(size),
                existing: false,
            }),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }

    async fn write_blob<S, B, E>(
        &self,
        tmp: &std::path::Path,
        digest: &Digest,
        limit: u64,
        mut body: S,
    ) -> HubResult<u64>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        let mut file = tokio::fs::File::create(tmp).await?;
        let mut hasher = Hasher::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                // The transport's own body limit shows up as a stream error.
                if e.to_string().contains("length limit") {
                    HubError::TooLarge(format!("artifact over the hub's limit of {limit} bytes"))
                } else {
                    HubError::Invalid(format!("upload interrupted: {e}"))
                }
            })?;
            let chunk = chunk.as_ref();
            size += chunk.len() as u64;
            if size > limit {
                return Err(HubError::TooLarge(format!(
                    "artifact over the hub's limit of {limit} bytes (max_artifact_bytes)"
                )));
            }
            hasher.update(chunk);
            file.write_all(chunk).await?;
        }
        file.sync_all().await?;
        let got = hasher.finish();
        if got != *digest {
            return Err(HubError::Invalid(format!(
                "artifact hash mismatch: the body hashes to {got}, the URL says {digest}"
            )));
        }
        tokio::fs::rename(tmp, self.store.blob_path(digest)).await?;
        Ok(size)
    }

    /// Publishes a signed manifest (postcard bytes) as a new version; durable on return.
    pub async fn publish(&self, body: &[u8]) -> HubResult<Published> {
        let signed = Signed::<ModelManifest>::from_bytes(body)?;
        let manifest = signed.verify(&self.config.load().trust, crate::now())?;
        manifest.validate()?;
        match self.store.blob_size(&manifest.artifact.sha256) {
            None => {
                return Err(HubError::Conflict(format!(
                    "artifact {} is not uploaded; PUT it to /api/v1/blobs/{} first",
                    manifest.artifact.sha256, manifest.artifact.sha256
                )));
            }
            Some(size) if size != manifest.artifact.size => {
                return Err(HubError::Invalid(format!(
                    "manifest says the artifact is {} bytes, the uploaded one is {size}",
                    manifest.artifact.size
                )));
            }
            Some(_) => {}
        }
        let record = ModelRecord {
            manifest: signed.clone(),
            uploaded_at: crate::now(),
        };
        if let Err(latest) =
            self.store
                .insert_model_above_latest(&record, &manifest.name, manifest.version)?
        {
            return Err(HubError::Conflict(format!(
                "model {} already has version {latest}; versions must strictly increase (use {})",
                manifest.name,
                latest + 1
            )));
        }
        self.store.flush().await?;
        tracing::info!(model = %manifest.name, version = manifest.version, signer = %signed.signer.short(), "model published");
        Ok(Published {
            name: manifest.name,
            version: manifest.version,
            manifest_digest: signed.digest(),
            signer: signed.signer.to_hex(),
        })
    }

    /// Every model with its versions.
    pub fn list(&self) -> HubResult<Vec<ModelVersions>> {
        group_versions(self.store.models()?)
    }

    /// One model with its versions.
    pub fn get(&self, model: &str) -> HubResult<ModelVersions> {
        name::validate(model)?;
        let records: Vec<_> = self
            .store
            .models()?
            .into_iter()
            .filter(|r| {
                r.manifest
                    .decode_unverified()
                    .map(|m| m.name == model)
                    .unwrap_or(false)
            })
            .collect();
        group_versions(records)?
            .pop()
            .ok_or_else(|| HubError::NotFound(format!("no model named {model:?}")))
    }

    /// A stored version, if there is one.
    pub fn record(&self, model: &str, version: u64) -> HubResult<Option<ModelRecord>> {
        self.store.model(model, version)
    }

    /// A version named as a caller gives it (the version as text), with its manifest.
    pub fn find(&self, model: &str, version: &str) -> HubResult<(ModelRecord, ModelManifest)> {
        name::validate(model)?;
        let version: u64 = version.parse().map_err(|_| {
            HubError::Invalid(format!("version {version:?} is not a positive integer"))
        })?;
        let record = self
            .store
            .model(model, version)?
            .ok_or_else(|| HubError::NotFound(format!("model {model} has no version {version}")))?;
        let manifest = record.manifest.decode_unverified()?;
        Ok((record, manifest))
    }

    /// Where an artifact's bytes are.
    pub fn artifact_path(&self, digest: &Digest) -> std::path::PathBuf {
        self.store.blob_path(digest)
    }

    /// What the version's manifest says about its columns and training data; `None` when the
    /// hub has no such version. Decoded once per version.
    pub fn facts(&self, model: &str, version: u64) -> HubResult<Option<Arc<VersionFacts>>> {
        let key = (model.to_owned(), version);
        if let Some(f) = self.cached(&key) {
            return Ok(Some(f));
        }
        let Some(record) = self.store.model(model, version)? else {
            return Ok(None);
        };
        let manifest = record.manifest.decode_unverified()?;
        let facts = Arc::new(VersionFacts {
            task: edgefleet_common::quality::Task::of(&manifest),
            columns: edgefleet_common::sketch::model_columns(&manifest)
                .into_iter()
                .map(|c| c.name)
                .collect(),
            // An unreadable reference means no drift for this version, not a failure of
            // everything that reads the version.
            reference: manifest
                .reference_profile
                .and_then(|b| Profile::from_bytes(&b).ok()),
        });
        if let Ok(mut cache) = self.facts.lock() {
            if cache.len() >= MAX_CACHED_VERSIONS {
                cache.clear();
            }
            cache.insert(key, facts.clone());
        }
        Ok(Some(facts))
    }

    fn cached(&self, key: &(String, u64)) -> Option<Arc<VersionFacts>> {
        self.facts.lock().ok()?.get(key).cloned()
    }
}

/// Records (sorted by name, then version) grouped per model.
fn group_versions(records: Vec<ModelRecord>) -> HubResult<Vec<ModelVersions>> {
    let mut out: Vec<ModelVersions> = Vec::new();
    for r in records {
        let m = r.manifest.decode_unverified()?;
        let v = VersionInfo {
            version: m.version,
            manifest_digest: r.manifest.digest(),
            artifact_sha256: m.artifact.sha256,
            artifact_size: m.artifact.size,
            created_at: m.created_at,
            uploaded_at: r.uploaded_at,
            signer: r.manifest.signer.to_hex(),
            description: m.description,
            lineage: m.lineage,
            inputs: m.inputs,
            outputs: m.outputs,
        };
        match out.last_mut() {
            Some(last) if last.name == m.name => last.versions.push(v),
            _ => out.push(ModelVersions {
                name: m.name,
                versions: vec![v],
            }),
        }
    }
    Ok(out)
}
