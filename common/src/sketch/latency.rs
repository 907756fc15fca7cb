//! Latency: a DDSketch (relative value error 1 %, mergeable), on the wire in the DataDog
//! Java-compatible encoding that `sketches-ddsketch` reads and writes.

use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config, DDSketch};

use super::SketchError;

/// Relative accuracy of every quantile (the crate's default configuration: α = 1 %, 2048 bins,
/// the one its decoder rebuilds, so decoded sketches merge with ours).
pub const ALPHA: f64 = 0.01;

fn config() -> Config {
    Config::defaults()
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "serde_bytes::ByteBuf", into = "serde_bytes::ByteBuf")]
pub struct LatencySketch(DDSketch);

impl std::fmt::Debug for LatencySketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LatencySketch(n={})", self.0.count())
    }
}

impl Default for LatencySketch {
    fn default() -> Self {
        Self(DDSketch::new(config()))
    }
}

impl LatencySketch {
    /// Records one latency in microseconds.
    pub fn record_us(&mut self, us: f64) {
        if us.is_finite() && us >= 0.0 {
            self.0.add(us);
        }
    }

    /// Merges `other` in; refused (nothing changed) when the counts would pass 2^53.
    pub fn merge(&mut self, other: &Self) -> Result<(), SketchError> {
        self.check_merge(other)?;
        self.0
            .merge(&other.0)
            .map_err(|e| SketchError::Invalid(format!("DDSketch merge: {e}")))
    }

    /// Whether [`merge`](Self::merge) would accept `other`: every sketch of this type has the
    /// one configuration (decoding re-records into it), so only the count can refuse.
    pub fn check_merge(&self, other: &Self) -> Result<(), SketchError> {
        if self.count().saturating_add(other.count()) > super::MAX_COUNT {
            return Err(SketchError::Invalid(
                "DDSketch merge: counts would pass 2^53".into(),
            ));
        }
        Ok(())
    }

    pub fn count(&self) -> u64 {
        self.0.count() as u64
    }

    /// The `q`-quantile in microseconds, within 1 % of the true value.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        self.0.quantile(q.clamp(0.0, 1.0)).ok().flatten()
    }

    pub fn sum_us(&self) -> Option<f64> {
        self.0.sum()
    }
}

impl From<LatencySketch> for Vec<u8> {
    fn from(s: LatencySketch) -> Self {
        s.0.to_java_bytes()
    }
}

impl From<LatencySketch> for serde_bytes::ByteBuf {
    fn from(s: LatencySketch) -> Self {
        serde_bytes::ByteBuf::from(Vec::from(s))
    }
}

impl TryFrom<serde_bytes::ByteBuf> for LatencySketch {
    type Error = SketchError;

    fn try_from(bytes: serde_bytes::ByteBuf) -> Result<Self, SketchError> {
        Self::try_from(bytes.into_vec())
    }
}

impl TryFrom<Vec<u8>> for LatencySketch {
    type Error = SketchError;

    fn try_from(bytes: Vec<u8>) -> Result<Self, SketchError> {
        // The crate's store arithmetic trusts the bin keys and counts it decodes (a hostile key
        // can overflow or index out of bounds): check every field first, then let it decode.
        check_java_bytes(&bytes).map_err(|e| SketchError::Invalid(format!("DDSketch: {e}")))?;
        let decoded = DDSketch::from_java_bytes(&bytes)
            .map_err(|e| SketchError::Invalid(format!("DDSketch: {e:?}")))?;
        // Re-record into our own configuration: whatever mapping the bytes declared, the
        // sketch we keep merges with ours (and a hostile mapping cannot reach merge).
        let mut s = LatencySketch::default();
        s.0.merge(&decoded)
            .map_err(|_| SketchError::Invalid("DDSketch: not 1 % relative accuracy".into()))?;
        Ok(s)
    }
}

/// Largest latency a bin may stand for: 10^13 µs (about 115 days).
const MAX_LATENCY_US: f64 = 1e13;
/// More bins than a sketch of ours can hold (2048) plus slack for the crate's chunking.
const MAX_BINS: u64 = 4096;

// Flag bytes of DataDog's encoding, as `sketches-ddsketch` writes them.
const FLAG_INDEX_MAPPING_LOG: u8 = 0x02;
const FLAG_ZERO_COUNT: u8 = 0x04;
const FLAG_COUNT: u8 = 0xA0;
const FLAG_SUM: u8 = 0x84;
const FLAG_MIN: u8 = 0x88;
const FLAG_MAX: u8 = 0x8C;
/// Positive store, bins as index deltas and counts (the only store mode the crate writes).
const FLAG_POSITIVE_DELTAS_AND_COUNTS: u8 = (1 << 2) | 1;

/// Accepts exactly what our encoder can produce: our mapping (γ for α = 1 %, offset 0),
/// finite summary statistics, a zero count and one positive store of at most [`MAX_BINS`] bins
/// whose keys map to latencies in 10^-9..10^13 µs, every count a whole number and the total at
/// most [`MAX_COUNT`](super::MAX_COUNT). Negative latencies, other store modes and unknown
/// flags are refused.
fn check_java_bytes(bytes: &[u8]) -> Result<(), String> {
    let ours = config();
    let (min_key, max_key) = (ours.key(ours.min_possible()), ours.key(MAX_LATENCY_US));
    let mut input = bytes;
    if input.is_empty() {
        return Err("no bytes".into());
    }
    // The crate skips a leading 0x02 when a flag byte follows; the check must read what the
    // crate will read.
    if input.len() >= 2 && input[0] == 0x02 && crate_skips_prefix(input[1]) {
        input = &input[1..];
    }
    let mut total: f64 = 0.0;
    let whole = |c: f64, what: &str| -> Result<f64, String> {
        if c.is_finite() && c >= 0.0 && c.fract() == 0.0 && c <= super::MAX_COUNT as f64 {
            Ok(c)
        } else {
            Err(format!("{what} {c} is not a whole count up to 2^53"))
        }
    };
    while let Some((&flag, rest)) = input.split_first() {
        input = rest;
        match flag {
            FLAG_INDEX_MAPPING_LOG => {
                let gamma = read_f64(&mut input)?;
                let offset = read_f64(&mut input)?;
                if gamma.to_bits() != ours.gamma.to_bits() || offset != 0.0 {
                    return Err(format!(
                        "mapping gamma {gamma} offset {offset} is not 1 % relative accuracy"
                    ));
                }
            }
            FLAG_ZERO_COUNT => total += whole(var_double(&mut input)?, "zero count")?,
            FLAG_COUNT => {
                whole(var_double(&mut input)?, "count")?;
            }
            FLAG_SUM | FLAG_MIN | FLAG_MAX => {
                let v = read_f64(&mut input)?;
                if !v.is_finite() {
                    return Err(format!("summary statistic {v} is not finite"));
                }
            }
            FLAG_POSITIVE_DELTAS_AND_COUNTS => {
                let bins = var_long(&mut input)?;
                if bins > MAX_BINS {
                    return Err(format!("{bins} bins, over the limit of {MAX_BINS}"));
                }
                let mut key: i64 = 0;
                for _ in 0..bins {
                    let delta = zigzag(var_long(&mut input)?);
                    key = key
                        .checked_add(delta)
                        .ok_or_else(|| "bin key overflows".to_string())?;
                    if key < i64::from(min_key) || key > i64::from(max_key) {
                        return Err(format!(
                            "bin key {key} is outside {min_key}..={max_key} (latencies of 1e-9..1e13 µs)"
                        ));
                    }
                    total += whole(var_double(&mut input)?, "bin count")?;
                }
            }
            other => return Err(format!("unexpected flag byte 0x{other:02X}")),
        }
        if total > super::MAX_COUNT as f64 {
            return Err("counts add up to more than 2^53".into());
        }
    }
    Ok(())
}

/// The crate's `is_valid_flag_byte`: which second bytes make it skip a leading 0x02.
fn crate_skips_prefix(b: u8) -> bool {
    let subflag = b >> 2;
    matches!(
        b,
        FLAG_ZERO_COUNT | FLAG_COUNT | FLAG_SUM | FLAG_MIN | FLAG_MAX | FLAG_INDEX_MAPPING_LOG
    ) || match b & 0x03 {
        1 | 3 => (1..=3).contains(&subflag),
        2 => subflag <= 4,
        _ => false,
    }
}

fn read_f64(input: &mut &[u8]) -> Result<f64, String> {
    let (head, rest) = input
        .split_first_chunk::<8>()
        .ok_or_else(|| "truncated".to_string())?;
    *input = rest;
    Ok(f64::from_le_bytes(*head))
}

fn read_byte(input: &mut &[u8]) -> Result<u8, String> {
    let (&b, rest) = input.split_first().ok_or_else(|| "truncated".to_string())?;
    *input = rest;
    Ok(b)
}

/// DataDog's unsigned var-long: 7 bits per byte, the ninth byte whole.
fn var_long(input: &mut &[u8]) -> Result<u64, String> {
    let mut value: u64 = 0;
    let mut shift: u32 = 0;
    loop {
        let next = read_byte(input)?;
        if next < 0x80 || shift == 56 {
            return Ok(value | (u64::from(next) << shift));
        }
        value |= (u64::from(next) & 0x7F) << shift;
        shift += 7;
    }
}

fn zigzag(encoded: u64) -> i64 {
    ((encoded >> 1) as i64) ^ -((encoded & 1) as i64)
}

/// DataDog's var-double: the bits of `value + 1` minus those of 1, rotated, 7 bits per byte.
fn var_double(input: &mut &[u8]) -> Result<f64, String> {
    let mut bits: u64 = 0;
    let mut shift: i32 = 57;
    loop {
        let next = read_byte(input)?;
        if shift == 1 {
            bits |= u64::from(next);
            break;
        }
        if next < 0x80 {
            bits |= u64::from(next) << shift;
            break;
        }
        bits |= (u64::from(next) & 0x7F) << shift;
        shift -= 7;
    }
    Ok(f64::from_bits(bits.rotate_right(6).wrapping_add(1f64.to_bits())) - 1.0)
}
