//! Step 1: is this assignment for us, trusted, current, and new?
//!
//! Both functions are pure: the caller reads the trust root, the last serial and the version
//! served once, and passes them in, so the policy is the same whether a bundle was polled or
//! pushed, and can be tested without a hub.

use edgefleet_common::{Assignment, Signed, TrustRoot};

use crate::error::{AgentError, AgentResult};

/// What to do with a verified assignment, given what was applied before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// An older assignment for the version already served: nothing to do, nothing wrong.
    Ignore,
    /// The version is already served: only the (newer or equal) serial is recorded.
    RecordSerialOnly,
    /// A new version to fetch, stage and activate.
    Install,
}

/// Verifies `signed` against `root` at `now`, and checks it is well-formed, targets this device
/// and has not expired.
pub fn verify(
    signed: &Signed<Assignment>,
    root: &TrustRoot,
    device_id: &str,
    tags: &[String],
    now: u64,
) -> AgentResult<Assignment> {
    let a = signed.verify(root, now)?;
    a.validate()?;
    if !a.target.matches(device_id, tags) {
        return Err(AgentError::Assignment(format!(
            "it targets {}, not this device",
            a.target
        )));
    }
    if now >= a.expires_at {
        return Err(AgentError::Assignment(format!(
            "assignment expired at {} (now {now})",
            a.expires_at
        )));
    }
    Ok(a)
}

/// The serial policy. `last_serial` is the highest serial applied for the model (0 if none),
/// `current_version` the version served now.
///
/// A lower serial is a replay, except for the version already served: the HTTP long-poll and
/// the retained MQTT bundle race, and a re-issued assignment overtakes its predecessor, so an
/// older bundle for what the device serves is nothing wrong with the device and is ignored
/// (the caller counts it). A serial reused for another version is refused.
pub fn decide(
    a: &Assignment,
    last_serial: u64,
    current_version: Option<u64>,
) -> AgentResult<Decision> {
    let serves_it = current_version == Some(a.version);
    if a.serial < last_serial {
        if serves_it {
            return Ok(Decision::Ignore);
        }
        return Err(AgentError::Assignment(format!(
            "serial {} is older than {last_serial}, already applied for {} (replayed assignment)",
            a.serial, a.model
        )));
    }
    if serves_it {
        return Ok(Decision::RecordSerialOnly);
    }
    if a.serial == last_serial {
        return Err(AgentError::Assignment(format!(
            "serial {} for {} was already used",
            a.serial, a.model
        )));
    }
    Ok(Decision::Install)
}

#[cfg(test)]
mod tests {
    use edgefleet_common::{Digest, Target};

    use super::*;

    fn assignment(version: u64, serial: u64) -> Assignment {
        Assignment {
            target: Target::Device("shop-1".into()),
            model: "demand".into(),
            version,
            manifest_digest: Digest::of(b"manifest"),
            serial,
            issued_at: 0,
            expires_at: 3600,
        }
    }

    fn refusal(r: AgentResult<Decision>) -> String {
        match r {
            Ok(d) => panic!("must be refused, got {d:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn an_older_serial_for_the_served_version_is_ignored() {
        let d = decide(&assignment(1, 10), 11, Some(1)).expect("not an error");
        assert_eq!(d, Decision::Ignore);
    }

    #[test]
    fn an_older_serial_naming_another_version_is_a_replay() {
        assert_eq!(
            refusal(decide(&assignment(2, 9), 11, Some(1))),
            "refused assignment: serial 9 is older than 11, already applied for demand \
             (replayed assignment)"
        );
        // Nothing served at all: still a replay.
        let e = refusal(decide(&assignment(2, 9), 11, None));
        assert!(e.contains("replayed"), "{e}");
    }

    #[test]
    fn the_served_version_records_the_serial_only() {
        for serial in [11, 12] {
            let d = decide(&assignment(1, serial), 11, Some(1)).expect("ok");
            assert_eq!(d, Decision::RecordSerialOnly, "serial {serial}");
        }
    }

    #[test]
    fn a_reused_serial_is_refused() {
        assert_eq!(
            refusal(decide(&assignment(2, 11), 11, Some(1))),
            "refused assignment: serial 11 for demand was already used"
        );
        // Nothing applied yet reads as serial 0, so serial 0 counts as used.
        let e = refusal(decide(&assignment(1, 0), 0, None));
        assert!(e.contains("already used"), "{e}");
    }

    #[test]
    fn a_newer_serial_for_another_version_installs() {
        assert_eq!(
            decide(&assignment(2, 12), 11, Some(1)).expect("ok"),
            Decision::Install
        );
        assert_eq!(
            decide(&assignment(1, 1), 0, None).expect("ok"),
            Decision::Install
        );
    }
}
