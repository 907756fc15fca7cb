//! Key encodings of the sled trees. Names never contain a NUL byte (`edgefleet_common::name`),
//! so NUL separates the parts, and numbers are big-endian so keys sort by them.

pub fn model_key(name: &str, version: u64) -> Vec<u8> {
    let mut k = name.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

pub fn pair_key(a: &str, b: &str) -> Vec<u8> {
    let mut k = a.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

/// `telemetry_seen`: device \0 seq.
pub fn seen_key(device: &str, seq: u64) -> Vec<u8> {
    let mut k = device.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `telemetry_samples`: model \0 window end \0 version \0 device \0 seq: a model's samples
/// oldest first, whatever their version (the byte cap drops the oldest).
pub fn sample_key(model: &str, window_end: u64, version: u64, device: &str, seq: u64) -> Vec<u8> {
    let mut k = model.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&window_end.to_be_bytes());
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k.push(0);
    k.extend_from_slice(device.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The prefix of every aggregate of one model version.
pub fn version_prefix(model: &str, version: u64) -> Vec<u8> {
    let mut k = model.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k.push(0);
    k
}

/// `telemetry_agg`: model \0 version \0 hour \0 scope.
pub fn agg_key(model: &str, version: u64, hour: u64, scope: &str) -> Vec<u8> {
    let mut k = version_prefix(model, version);
    k.extend_from_slice(&hour.to_be_bytes());
    k.push(0);
    k.extend_from_slice(scope.as_bytes());
    k
}

/// (model, version, hour, scope) back from an aggregate key.
pub fn parse_agg_key(k: &[u8]) -> Option<(String, u64, u64, String)> {
    let z = k.iter().position(|&b| b == 0)?;
    let model = std::str::from_utf8(&k[..z]).ok()?.to_owned();
    let rest = &k[z + 1..];
    let version = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let hour = u64::from_be_bytes(rest.get(9..17)?.try_into().ok()?);
    let scope = std::str::from_utf8(rest.get(18..)?).ok()?.to_owned();
    Some((model, version, hour, scope))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_keys_round_trip() {
        let k = agg_key("demand", 3, 7200, "shops-eu");
        assert_eq!(
            parse_agg_key(&k),
            Some(("demand".into(), 3, 7200, "shops-eu".into()))
        );
        assert!(parse_agg_key(b"x").is_none());
    }
}
