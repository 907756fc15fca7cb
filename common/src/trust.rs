//! The trust model: a pinned root key, delegations, signed documents, root rotation.
//!
//! Modelled on TUF/Uptane roles with ed25519 everywhere:
//! - The **root key** is kept offline by the admin and pinned on every device.
//! - A **delegation**, signed by root, says "key K may sign these kinds of documents for models
//!   whose names match these patterns, until time T". The hub's online key gets one so it can
//!   sign assignments (and later retrained models) unattended.
//! - A [`Signed`] document carries its body bytes exactly as signed, the signer's public key,
//!   the signature and, when the signer is not root, the delegation that authorises it.
//! - The root is rotated by a [`RootRotation`] signed by both the old and the new root key; a
//!   rotation revokes every delegation the old root signed.

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::encoding::{self, Document};
use crate::error::{Error, Result};
use crate::keys::{PublicKey, SecretKey};
use crate::name;

/// What a delegated key may sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Permission {
    /// Sign model manifests (publish model versions).
    Manifests,
    /// Sign assignments (decide which device serves which version).
    Assignments,
}

impl Permission {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "manifests" => Some(Self::Manifests),
            "assignments" => Some(Self::Assignments),
            _ => None,
        }
    }
}

/// A document whose signer must be authorised for a model name.
pub trait Scoped: Document {
    const PERMISSION: Permission;
    fn scope(&self) -> &str;
}

impl Scoped for crate::manifest::ModelManifest {
    const PERMISSION: Permission = Permission::Manifests;
    fn scope(&self) -> &str {
        &self.name
    }
}

impl Scoped for crate::assignment::Assignment {
    const PERMISSION: Permission = Permission::Assignments;
    fn scope(&self) -> &str {
        &self.model
    }
}

/// Root's statement that `key` may sign `permissions` for models matching `patterns`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    pub key: PublicKey,
    pub label: String,
    pub patterns: Vec<String>,
    pub permissions: Vec<Permission>,
    pub issued_at: u64,
    pub expires_at: u64,
}

impl Document for Delegation {
    const KIND: &'static str = "delegation";
    const WHAT: &'static str = "delegation";
}

impl Delegation {
    /// Whether it lets its key sign `permission` documents for the model named `model`.
    pub fn covers(&self, permission: Permission, model: &str) -> bool {
        self.permissions.contains(&permission)
            && self
                .patterns
                .iter()
                .any(|p| name::pattern_matches(p, model))
    }

    pub fn validate(&self) -> Result<()> {
        if self.patterns.is_empty() {
            return Err(Error::InvalidManifest(
                "a delegation needs at least one pattern".into(),
            ));
        }
        for p in &self.patterns {
            name::validate_pattern(p)?;
        }
        if self.expires_at <= self.issued_at {
            return Err(Error::InvalidManifest(
                "a delegation must expire after it is issued".into(),
            ));
        }
        Ok(())
    }
}

/// The pinned root of trust: the current root key and how many rotations led to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustRoot {
    pub root_key: PublicKey,
    pub version: u64,
}

impl TrustRoot {
    pub fn new(root_key: PublicKey) -> Self {
        Self {
            root_key,
            version: 1,
        }
    }

    /// Applies one rotation: it must be the next version, signed by the current root and by the
    /// new root (proving the new key's holder agreed). Returns the new trust root.
    pub fn rotate(&self, rotation: &RootRotation) -> Result<TrustRoot> {
        let message = encoding::signing_bytes(RootRotationBody::KIND, &rotation.body);
        if !self.root_key.verify(&message, &rotation.old_root_signature) {
            return Err(Error::Rotation(format!(
                "not signed by the current root key {}",
                self.root_key.short()
            )));
        }
        let body: RootRotationBody = encoding::from_bytes("root rotation", &rotation.body)?;
        if !body.new_root.verify(&message, &rotation.new_root_signature) {
            return Err(Error::Rotation(
                "not countersigned by the new root key".into(),
            ));
        }
        if body.version != self.version + 1 {
            return Err(Error::Rotation(format!(
                "expected version {}, got {} (rotations must be applied in order)",
                self.version + 1,
                body.version
            )));
        }
        Ok(TrustRoot {
            root_key: body.new_root,
            version: body.version,
        })
    }

    /// Applies a chain of rotations, skipping those already applied.
    pub fn rotate_all(&self, chain: &[RootRotation]) -> Result<TrustRoot> {
        let mut current = self.clone();
        for r in chain {
            let body: RootRotationBody = encoding::from_bytes("root rotation", &r.body)?;
            if body.version <= current.version {
                continue;
            }
            current = current.rotate(r)?;
        }
        Ok(current)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootRotationBody {
    pub version: u64,
    pub new_root: PublicKey,
    pub issued_at: u64,
}

impl Document for RootRotationBody {
    const KIND: &'static str = "root-rotation";
    const WHAT: &'static str = "root rotation";
}

/// A root rotation, signed by the old root and countersigned by the new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootRotation {
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub old_root_signature: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub new_root_signature: Vec<u8>,
}

impl RootRotation {
    pub fn create(
        old_root: &SecretKey,
        new_root: &SecretKey,
        version: u64,
        issued_at: u64,
    ) -> Result<Self> {
        let body = encoding::to_bytes(&RootRotationBody {
            version,
            new_root: new_root.public(),
            issued_at,
        })?;
        let message = encoding::signing_bytes(RootRotationBody::KIND, &body);
        Ok(Self {
            old_root_signature: old_root.sign(&message),
            new_root_signature: new_root.sign(&message),
            body,
        })
    }
}

/// A document with the exact bytes that were signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Signed<T> {
    /// `postcard(T)`; the signature covers `encoding::signing_bytes(T::KIND, body)`.
    // As bytes, not a sequence of u8: the same postcard encoding, decoded in one copy instead
    // of element by element (a telemetry record's body is ~16 KB; the hub's ingest rate).
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    pub signer: PublicKey,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    /// Present when `signer` is not the root key.
    pub delegation: Option<Box<Signed<Delegation>>>,
    #[serde(skip)]
    _marker: PhantomData<fn() -> T>,
}

impl<T: Document> Signed<T> {
    pub fn sign(
        value: &T,
        key: &SecretKey,
        delegation: Option<Signed<Delegation>>,
    ) -> Result<Self> {
        let body = encoding::to_bytes(value)?;
        let signature = key.sign(&encoding::signing_bytes(T::KIND, &body));
        Ok(Self {
            body,
            signer: key.public(),
            signature,
            delegation: delegation.map(Box::new),
            _marker: PhantomData,
        })
    }

    /// SHA-256 of the signed bytes: the document's identity (assignments bind manifests by it).
    pub fn digest(&self) -> Digest {
        Digest::of(&encoding::signing_bytes(T::KIND, &self.body))
    }

    /// Decodes the body without checking anything: only for display of already-verified data.
    pub fn decode_unverified(&self) -> Result<T> {
        T::decode(&self.body)
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        encoding::to_bytes(self)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        encoding::from_bytes(T::WHAT, bytes)
    }

    fn check_signature(&self) -> Result<T> {
        let message = encoding::signing_bytes(T::KIND, &self.body);
        if !self.signer.verify(&message, &self.signature) {
            return Err(Error::BadSignature {
                what: T::WHAT,
                signer: self.signer.short(),
            });
        }
        T::decode(&self.body)
    }
}

impl Signed<Delegation> {
    /// A delegation is valid when root signed it, it is not nested, and `now` is in its window.
    pub fn verify(&self, root: &TrustRoot, now: u64) -> Result<Delegation> {
        if self.signer != root.root_key {
            return Err(Error::UntrustedSigner {
                what: "delegation",
                signer: self.signer.short(),
            });
        }
        if self.delegation.is_some() {
            return Err(Error::Malformed {
                what: "delegation",
                detail: "delegations cannot be re-delegated".into(),
            });
        }
        let d = self.check_signature()?;
        d.validate()?;
        if now < d.issued_at {
            return Err(Error::NotYetValid {
                what: "delegation",
                not_before: d.issued_at,
                now,
            });
        }
        if now >= d.expires_at {
            return Err(Error::Expired {
                what: "delegation",
                expires_at: d.expires_at,
                now,
            });
        }
        Ok(d)
    }
}

impl<T: Document> Signed<T> {
    /// For documents a device signs for itself (telemetry, heartbeats): the signer must be
    /// exactly `key`, with no delegation, and the signature must cover the body.
    pub fn verify_by(&self, key: &PublicKey) -> Result<T> {
        if self.signer != *key || self.delegation.is_some() {
            return Err(Error::UntrustedSigner {
                what: T::WHAT,
                signer: self.signer.short(),
            });
        }
        self.check_signature()
    }

    /// Signature, then that the signer is root or holds a valid delegation (signed by root,
    /// unexpired at `now`) granting `permission`. Returns the delegation when there is one.
    fn verify_permitted(
        &self,
        root: &TrustRoot,
        now: u64,
        permission: Permission,
    ) -> Result<(T, Option<Delegation>)> {
        let value = self.check_signature()?;
        if self.signer == root.root_key {
            return Ok((value, None));
        }
        let Some(delegation) = &self.delegation else {
            return Err(Error::UntrustedSigner {
                what: T::WHAT,
                signer: self.signer.short(),
            });
        };
        let d = delegation.verify(root, now)?;
        if d.key != self.signer {
            return Err(Error::UntrustedSigner {
                what: T::WHAT,
                signer: self.signer.short(),
            });
        }
        if !d.permissions.contains(&permission) {
            return Err(Error::NotPermitted {
                signer: self.signer.short(),
                what: T::WHAT,
            });
        }
        Ok((value, Some(d)))
    }

    /// For documents the hub signs about the fleet rather than one model (telemetry acks):
    /// root, or a key root delegated `permission` to, whatever its model patterns.
    pub fn verify_hub(&self, root: &TrustRoot, now: u64, permission: Permission) -> Result<T> {
        self.verify_permitted(root, now, permission).map(|(v, _)| v)
    }
}

impl<T: Scoped> Signed<T> {
    /// Full check: signature, then that the signer is root or holds a valid delegation (signed
    /// by root, unexpired at `now`) with the right permission and a pattern covering the scope.
    pub fn verify(&self, root: &TrustRoot, now: u64) -> Result<T> {
        let (value, delegation) = self.verify_permitted(root, now, T::PERMISSION)?;
        let Some(d) = delegation else {
            return Ok(value);
        };
        let scope = value.scope();
        if !d.patterns.iter().any(|p| name::pattern_matches(p, scope)) {
            return Err(Error::OutOfScope {
                signer: self.signer.short(),
                scope: scope.to_owned(),
                patterns: d.patterns,
            });
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assignment::{Assignment, Target};

    fn assignment(model: &str) -> Assignment {
        Assignment {
            target: Target::Device("shop-1".into()),
            model: model.into(),
            version: 3,
            manifest_digest: Digest([9; 32]),
            serial: 1,
            issued_at: 100,
            expires_at: 1000,
        }
    }

    fn delegation(
        key: &SecretKey,
        patterns: &[&str],
        perms: &[Permission],
        expires_at: u64,
    ) -> Delegation {
        Delegation {
            key: key.public(),
            label: "hub".into(),
            patterns: patterns.iter().map(|s| s.to_string()).collect(),
            permissions: perms.to_vec(),
            issued_at: 10,
            expires_at,
        }
    }

    #[test]
    fn root_signed_and_delegated_documents_verify() {
        let root = SecretKey::from_seed([1; 32]);
        let hub = SecretKey::from_seed([2; 32]);
        let trust = TrustRoot::new(root.public());
        let direct = Signed::sign(&assignment("demand"), &root, None).expect("sign");
        assert_eq!(
            direct.verify(&trust, 50).expect("root"),
            assignment("demand")
        );

        let d = Signed::sign(
            &delegation(&hub, &["demand*"], &[Permission::Assignments], 500),
            &root,
            None,
        )
        .expect("sign delegation");
        let via = Signed::sign(&assignment("demand-eu"), &hub, Some(d.clone())).expect("sign");
        via.verify(&trust, 50).expect("delegated");

        // Out of scope, expired, wrong permission, no delegation, not signed by root.
        let other = Signed::sign(&assignment("fraud"), &hub, Some(d.clone())).expect("sign");
        assert!(matches!(
            other.verify(&trust, 50),
            Err(Error::OutOfScope { .. })
        ));
        assert!(matches!(
            via.verify(&trust, 500),
            Err(Error::Expired { .. })
        ));
        let manifest_only = Signed::sign(
            &delegation(&hub, &["*"], &[Permission::Manifests], 500),
            &root,
            None,
        )
        .expect("sign");
        let wrong_perm =
            Signed::sign(&assignment("demand"), &hub, Some(manifest_only)).expect("sign");
        assert!(matches!(
            wrong_perm.verify(&trust, 50),
            Err(Error::NotPermitted { .. })
        ));
        let bare = Signed::sign(&assignment("demand"), &hub, None).expect("sign");
        assert!(matches!(
            bare.verify(&trust, 50),
            Err(Error::UntrustedSigner { .. })
        ));
        let self_delegated = Signed::sign(
            &delegation(&hub, &["*"], &[Permission::Assignments], 500),
            &hub,
            None,
        )
        .expect("sign");
        let forged = Signed::sign(&assignment("demand"), &hub, Some(self_delegated)).expect("sign");
        assert!(matches!(
            forged.verify(&trust, 50),
            Err(Error::UntrustedSigner { .. })
        ));
    }

    #[test]
    fn tampered_body_or_kind_confusion_is_refused() {
        let root = SecretKey::from_seed([1; 32]);
        let trust = TrustRoot::new(root.public());
        let mut signed = Signed::sign(&assignment("demand"), &root, None).expect("sign");
        let last = signed.body.len() - 1;
        signed.body[last] ^= 1;
        assert!(matches!(
            signed.verify(&trust, 50),
            Err(Error::BadSignature { .. })
        ));

        // A delegation's signature cannot be reused for an assignment with the same bytes.
        let d = Signed::sign(
            &delegation(&root, &["*"], &[Permission::Assignments], 500),
            &root,
            None,
        )
        .expect("sign");
        let confused: Signed<Assignment> = Signed {
            body: d.body.clone(),
            signer: d.signer,
            signature: d.signature.clone(),
            delegation: None,
            _marker: PhantomData,
        };
        assert!(confused.verify(&trust, 50).is_err());
    }

    #[test]
    fn root_rotation_happy_path_and_refusals() {
        let old = SecretKey::from_seed([1; 32]);
        let new = SecretKey::from_seed([3; 32]);
        let trust = TrustRoot::new(old.public());
        let rotation = RootRotation::create(&old, &new, 2, 100).expect("rotation");
        let rotated = trust.rotate(&rotation).expect("rotate");
        assert_eq!(
            rotated,
            TrustRoot {
                root_key: new.public(),
                version: 2
            }
        );
        // Idempotent over a chain, and the old root no longer signs anything.
        assert_eq!(
            trust
                .rotate_all(std::slice::from_ref(&rotation))
                .expect("chain"),
            rotated
        );
        assert_eq!(
            rotated
                .rotate_all(std::slice::from_ref(&rotation))
                .expect("skip"),
            rotated
        );
        let old_signed = Signed::sign(&assignment("demand"), &old, None).expect("sign");
        assert!(old_signed.verify(&rotated, 50).is_err());
        Signed::sign(&assignment("demand"), &new, None)
            .expect("sign")
            .verify(&rotated, 50)
            .expect("new root");

        // Not countersigned, wrong version, signed by someone else.
        let mut lone = rotation.clone();
        lone.new_root_signature = old.sign(b"x");
        assert!(trust.rotate(&lone).is_err());
        let skip = RootRotation::create(&old, &new, 3, 100).expect("rotation");
        assert!(trust.rotate(&skip).is_err());
        let attacker = SecretKey::from_seed([4; 32]);
        let hostile = RootRotation::create(&attacker, &attacker, 2, 100).expect("rotation");
        assert!(trust.rotate(&hostile).is_err());
    }
}
