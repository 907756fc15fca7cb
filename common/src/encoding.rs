//! Canonical bytes: what signatures cover.
//!
//! A signed document's bytes are `b"EDGEFLEET\x00" || kind || b"\x00" || FORMAT_VERSION || body`,
//! where `body` is the postcard encoding of the document's struct. The prefix separates domains:
//! a signature over a manifest can never be replayed as an assignment or a delegation, and a
//! future format can never be confused with this one. Signers transmit the body bytes as they
//! signed them; verifiers check the signature over exactly those bytes and only then decode.

use serde::{Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};

/// Version byte of the canonical encoding. A change of any document's layout bumps it.
pub const FORMAT_VERSION: u8 = 1;

/// Upper bound for any one encoded document (TUF's targets-metadata bound): bigger is refused
/// before decoding, so an attacker cannot make us allocate.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

/// A document type with its own signing domain.
pub trait Document: Serialize + DeserializeOwned {
    /// Domain-separation tag, e.g. `"manifest"`.
    const KIND: &'static str;
    /// Human name used in error messages.
    const WHAT: &'static str;

    /// Decodes the signed body. A document whose layout grew overrides this to read its
    /// earlier layouts too (see [`crate::telemetry::TelemetryRecord`]).
    fn decode(body: &[u8]) -> Result<Self> {
        from_bytes(Self::WHAT, body)
    }
}

/// The domain-separation prefix for a document kind.
pub fn domain_prefix(kind: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + kind.len());
    p.extend_from_slice(b"EDGEFLEET\0");
    p.extend_from_slice(kind.as_bytes());
    p.push(0);
    p.push(FORMAT_VERSION);
    p
}

/// The exact bytes a signature covers.
pub fn signing_bytes(kind: &str, body: &[u8]) -> Vec<u8> {
    let mut m = domain_prefix(kind);
    m.extend_from_slice(body);
    m
}

/// Postcard-encode a value (infallible for our types, but reported rather than unwrapped).
pub fn to_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| Error::Malformed {
        what: "document",
        detail: format!("cannot encode: {e}"),
    })
}

/// Decode postcard bytes with a size bound, refusing trailing bytes.
pub fn from_bytes<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(Error::TooLarge {
            what,
            size: bytes.len(),
            limit: MAX_DOCUMENT_BYTES,
        });
    }
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| Error::Malformed {
        what,
        detail: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(Error::Malformed {
            what,
            detail: format!("{} trailing bytes", rest.len()),
        });
    }
    Ok(value)
}
