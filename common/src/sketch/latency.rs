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
#[serde(try_from = "Vec<u8>", into = "Vec<u8>")]
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

    pub fn merge(&mut self, other: &Self) -> Result<(), SketchError> {
        self.0
            .merge(&other.0)
            .map_err(|e| SketchError::Invalid(format!("DDSketch merge: {e}")))
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

impl TryFrom<Vec<u8>> for LatencySketch {
    type Error = SketchError;

    fn try_from(bytes: Vec<u8>) -> Result<Self, SketchError> {
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
