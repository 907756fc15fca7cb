//! ASCII armour for signed documents stored in files or pasted in terminals.
//!
//! ```text
//! -----BEGIN EDGEFLEET MANIFEST-----
//! <base64 (standard alphabet, padded) of the postcard bytes, wrapped at 64 columns>
//! -----END EDGEFLEET MANIFEST-----
//! ```
//! Files may also hold the raw postcard bytes; `decode` accepts both.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::encoding::MAX_DOCUMENT_BYTES;
use crate::error::{Error, Result};

pub fn encode(label: &str, bytes: &[u8]) -> String {
    let b64 = STANDARD.encode(bytes);
    let mut out = format!("-----BEGIN EDGEFLEET {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END EDGEFLEET {label}-----\n"));
    out
}

/// Accepts an armoured text with the given label, or raw bytes.
pub fn decode(label: &str, input: &[u8]) -> Result<Vec<u8>> {
    if input.len() > MAX_DOCUMENT_BYTES * 2 {
        return Err(Error::TooLarge {
            what: "armoured document",
            size: input.len(),
            limit: MAX_DOCUMENT_BYTES * 2,
        });
    }
    let begin = format!("-----BEGIN EDGEFLEET {label}-----");
    let Ok(text) = std::str::from_utf8(input) else {
        return Ok(input.to_vec());
    };
    let text = text.trim();
    if !text.starts_with("-----BEGIN") {
        return Ok(input.to_vec());
    }
    let malformed = |detail: String| Error::Malformed {
        what: "armoured document",
        detail,
    };
    let Some(rest) = text.strip_prefix(&begin) else {
        let first = text.lines().next().unwrap_or_default();
        return Err(malformed(format!("expected {begin:?}, found {first:?}")));
    };
    let end = format!("-----END EDGEFLEET {label}-----");
    let Some(body) = rest.trim_end().strip_suffix(&end) else {
        return Err(malformed(format!("missing {end:?} line")));
    };
    let compact: String = body.split_whitespace().collect();
    STANDARD
        .decode(compact)
        .map_err(|e| malformed(format!("bad base64: {e}")))
}

/// Decodes every armoured block with the given label in `text`, in order (e.g. a chain of root
/// rotations kept in one file).
pub fn decode_all(label: &str, text: &str) -> Result<Vec<Vec<u8>>> {
    let begin = format!("-----BEGIN EDGEFLEET {label}-----");
    let end = format!("-----END EDGEFLEET {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let after = &rest[start..];
        let Some(stop) = after.find(&end) else {
            return Err(Error::Malformed {
                what: "armoured document",
                detail: format!("missing {end:?} line"),
            });
        };
        out.push(decode(label, &after.as_bytes()[..stop + end.len()])?);
        rest = &after[stop + end.len()..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_raw_and_chains() {
        let a = encode("MANIFEST", b"hello world");
        assert_eq!(
            decode("MANIFEST", a.as_bytes()).expect("decode"),
            b"hello world"
        );
        assert_eq!(decode("MANIFEST", b"\x00raw").expect("raw"), b"\x00raw");
        assert!(decode("DELEGATION", a.as_bytes()).is_err(), "wrong label");
        assert!(
            decode("MANIFEST", a.replace("aGVsbG8", "!!!").as_bytes()).is_err(),
            "bad base64"
        );
        let chain = format!(
            "{}{}",
            encode("ROOT ROTATION", b"one"),
            encode("ROOT ROTATION", b"two")
        );
        assert_eq!(
            decode_all("ROOT ROTATION", &chain).expect("chain"),
            vec![b"one".to_vec(), b"two".to_vec()]
        );
        assert!(
            decode_all(
                "ROOT ROTATION",
                "-----BEGIN EDGEFLEET ROOT ROTATION-----\nxx"
            )
            .is_err()
        );
    }
}
