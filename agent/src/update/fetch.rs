//! Step 2: the manifest the assignment names, from the hub.
//!
//! The hub is not trusted: the manifest must hash to the digest the signed assignment binds
//! (so a valid manifest of another version cannot be swapped in), verify against the root, and
//! name the model and version assigned.

use edgefleet_common::{Assignment, ModelManifest, Signed, TrustRoot};

use crate::error::{AgentError, AgentResult};
use crate::hub_client::HubClient;

/// A manifest that passed every check: the signed bytes (installed as they are) and their
/// verified content.
pub struct Manifest {
    pub signed: Signed<ModelManifest>,
    pub verified: ModelManifest,
}

/// Fetches and checks the manifest for assignment `a`.
pub async fn manifest(
    hub: &HubClient,
    a: &Assignment,
    root: &TrustRoot,
    now: u64,
) -> AgentResult<Manifest> {
    let signed = hub.manifest(now, &a.model, a.version).await?;
    if signed.digest() != a.manifest_digest {
        return Err(AgentError::Assignment(format!(
            "the hub's manifest for {} v{} hashes to {}, the assignment binds {}",
            a.model,
            a.version,
            signed.digest(),
            a.manifest_digest
        )));
    }
    let m = signed.verify(root, now)?;
    m.validate()?;
    if m.name != a.model || m.version != a.version {
        return Err(AgentError::Assignment(format!(
            "manifest is {} v{}, assignment wants {} v{}",
            m.name, m.version, a.model, a.version
        )));
    }
    Ok(Manifest {
        signed,
        verified: m,
    })
}
