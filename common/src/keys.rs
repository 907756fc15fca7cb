//! ed25519 keys and their file formats.
//!
//! Private keys are PKCS#8 v2 PEM (`-----BEGIN PRIVATE KEY-----`, RFC 8410), the format OpenSSL,
//! `ssh-keygen -m PKCS8` exports and most KMSs use. Public keys are SubjectPublicKeyInfo PEM
//! (`-----BEGIN PUBLIC KEY-----`) in files, and 64 lowercase hex characters on the wire and in
//! JSON. Reading and writing the files (and their 0600 mode) is the binaries' job: this crate
//! does no I/O.

use std::fmt;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// An ed25519 public key (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

/// An ed25519 private key. Never printed, never serialised except to PKCS#8 PEM on request.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::InvalidKey(format!("no randomness: {e}")))?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.0.sign(message).to_bytes().to_vec()
    }

    pub fn to_pem(&self) -> Result<String> {
        self.0
            .to_pkcs8_pem(LineEnding::LF)
            .map(|z| z.to_string())
            .map_err(|e| Error::InvalidKey(e.to_string()))
    }

    pub fn from_pem(pem: &str) -> Result<Self> {
        SigningKey::from_pkcs8_pem(pem.trim()).map(Self).map_err(|e| {
            Error::InvalidKey(format!(
                "not an ed25519 PKCS#8 PEM private key ({e}); create one with `edgefleet keygen`"
            ))
        })
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public())
    }
}

impl PublicKey {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out)
            .map_err(|e| Error::InvalidKey(format!("expected 64 hex characters: {e}")))?;
        Self::from_bytes(out)
    }

    /// Checks that the bytes are a valid curve point.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self> {
        VerifyingKey::from_bytes(&bytes).map_err(|e| Error::InvalidKey(e.to_string()))?;
        Ok(Self(bytes))
    }

    pub fn to_pem(&self) -> Result<String> {
        self.verifying_key()?
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| Error::InvalidKey(e.to_string()))
    }

    /// Accepts an SPKI PEM public key or 64 hex characters.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.starts_with("-----BEGIN") {
            let key = VerifyingKey::from_public_key_pem(text)
                .map_err(|e| Error::InvalidKey(format!("not an ed25519 public key PEM: {e}")))?;
            Ok(Self(key.to_bytes()))
        } else {
            Self::from_hex(text)
        }
    }

    fn verifying_key(&self) -> Result<VerifyingKey> {
        VerifyingKey::from_bytes(&self.0).map_err(|e| Error::InvalidKey(e.to_string()))
    }

    /// Strict verification (rejects small-order keys and malleable signatures).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(key) = self.verifying_key() else {
            return false;
        };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        key.verify_strict(message, &sig).is_ok()
    }

    /// Short form for logs: the first 16 hex characters.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short())
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let bytes = if d.is_human_readable() {
            let s = String::deserialize(d)?;
            let mut out = [0u8; 32];
            hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
            out
        } else {
            <[u8; 32]>::deserialize(d)?
        };
        Ok(Self(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_and_bad_input() {
        let key = SecretKey::from_seed([7; 32]);
        let pem = key.to_pem().expect("encode");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = SecretKey::from_pem(&pem).expect("decode");
        assert_eq!(back.public(), key.public());
        let pub_pem = key.public().to_pem().expect("encode public");
        assert_eq!(PublicKey::parse(&pub_pem).expect("parse"), key.public());
        assert_eq!(
            PublicKey::parse(&key.public().to_hex()).expect("hex"),
            key.public()
        );
        assert!(SecretKey::from_pem("garbage").is_err());
        assert!(PublicKey::parse("abcd").is_err());
        assert!(PublicKey::parse(&pem).is_err());
    }

    #[test]
    fn signatures_verify_strictly() {
        let key = SecretKey::from_seed([1; 32]);
        let sig = key.sign(b"hello");
        assert!(key.public().verify(b"hello", &sig));
        assert!(!key.public().verify(b"hellp", &sig));
        assert!(!key.public().verify(b"hello", &sig[..63]));
        assert!(
            !SecretKey::from_seed([2; 32])
                .public()
                .verify(b"hello", &sig)
        );
    }
}
