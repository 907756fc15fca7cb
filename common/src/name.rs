//! Names that become path components on the hub and on devices: model names, device ids, tags.
//!
//! The rules are strict on purpose (TUF's `target_path_safety`): a name is 1–64 characters of
//! `a-z 0-9 . _ -`, starts with a letter or digit, and never contains `..`. That rules out
//! absolute paths, separators (plain or percent-encoded, since `%` is refused), NUL, and
//! traversal, so a name can be joined to a directory without further checks.

use crate::error::{Error, Result};

pub const MAX_NAME_LEN: usize = 64;

/// Validates a model name, device id or tag.
pub fn validate(name: &str) -> Result<()> {
    let err = |reason| {
        Err(Error::InvalidName {
            name: name.chars().take(80).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return err("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return err("longer than 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return err("only lowercase letters, digits, '.', '_' and '-' are allowed");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return err("must start with a letter or digit");
    }
    if name.contains("..") {
        return err("must not contain '..'");
    }
    Ok(())
}

/// A delegation scope pattern: an exact name, `prefix*`, or `*` for every name.
pub fn validate_pattern(pattern: &str) -> Result<()> {
    match pattern.strip_suffix('*') {
        Some("") => Ok(()),
        Some(prefix) => {
            if prefix.contains('*') {
                return Err(Error::InvalidName {
                    name: pattern.into(),
                    reason: "'*' may only appear once, at the end",
                });
            }
            validate(prefix)
        }
        None => validate(pattern),
    }
}

pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_traversal_and_odd_characters() {
        for bad in [
            "", "..", "../etc", "a/b", "/abs", "a\\b", "a%2fb", "A", "a b", ".hidden", "-x",
            "a..b", "a\0b", "é",
        ] {
            assert!(validate(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(validate(&"a".repeat(65)).is_err());
        for good in ["demand", "demand-v2", "shop.42", "a_b", "0x"] {
            validate(good).expect(good);
        }
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("demand-*", "demand-eu"));
        assert!(!pattern_matches("demand-*", "fraud"));
        assert!(pattern_matches("demand", "demand"));
        assert!(!pattern_matches("demand", "demand2"));
        assert!(validate_pattern("a*b*").is_err());
        assert!(validate_pattern("../*").is_err());
        validate_pattern("*").expect("star");
    }
}
