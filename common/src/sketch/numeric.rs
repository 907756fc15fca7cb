//! Numeric columns: a KLL quantile sketch (Apache DataSketches) plus exact count, non-finite
//! count, min, max, mean and M2 (Welford), all mergeable.

use datasketches::common::SearchCriteria;
use datasketches::kll::{KllFloat, KllSketch};
use serde::{Deserialize, Serialize};

use super::SketchError;

/// KLL's k: rank error ≈ 1.65 % (two-sided, 99 % confidence) at 200.
pub const DEFAULT_K: u16 = 200;

/// A numeric column's summary. Non-finite values (NaN, ±∞: missing or broken inputs) are
/// counted, not sketched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "NumericWire", into = "NumericWire")]
pub struct NumericSketch {
    count: u64,
    nonfinite: u64,
    min: f64,
    max: f64,
    mean: f64,
    m2: f64,
    kll: KllSketch<KllFloat<f32>>,
}

impl Default for NumericSketch {
    fn default() -> Self {
        Self::new(DEFAULT_K).unwrap_or_else(|_| unreachable!("DEFAULT_K is valid"))
    }
}

impl NumericSketch {
    /// `k` between 8 and 65535.
    pub fn new(k: u16) -> Result<Self, SketchError> {
        Ok(Self {
            count: 0,
            nonfinite: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            mean: 0.0,
            m2: 0.0,
            kll: KllSketch::new(k).map_err(|e| SketchError::Invalid(e.to_string()))?,
        })
    }

    /// Adds one value. NaN, ±∞ and magnitudes beyond f32's range (which the f32 sketch could
    /// not hold, and whose squares would overflow the moments) count as non-finite.
    pub fn update(&mut self, x: f64) {
        if !x.is_finite() || x.abs() > f64::from(f32::MAX) {
            self.nonfinite += 1;
            return;
        }
        self.count += 1;
        let delta = x - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (x - self.mean);
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        if let Ok(v) = KllFloat::<f32>::new(x as f32) {
            self.kll.update(v);
        }
    }

    /// Adds `other` (Chan et al.'s pairwise update for the moments).
    pub fn merge(&mut self, other: &Self) -> Result<(), SketchError> {
        self.kll
            .merge(&other.kll)
            .map_err(|e| SketchError::Invalid(e.to_string()))?;
        let (na, nb) = (self.count as f64, other.count as f64);
        if other.count > 0 {
            let n = na + nb;
            let delta = other.mean - self.mean;
            self.mean += delta * nb / n;
            self.m2 += other.m2 + delta * delta * na * nb / n;
            self.min = self.min.min(other.min);
            self.max = self.max.max(other.max);
        }
        self.count = self.count.saturating_add(other.count);
        self.nonfinite = self.nonfinite.saturating_add(other.nonfinite);
        Ok(())
    }

    /// Finite values seen.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// NaN and ±∞ values seen.
    pub fn nonfinite(&self) -> u64 {
        self.nonfinite
    }

    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some(self.min)
    }

    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then_some(self.mean)
    }

    /// Sample standard deviation (n − 1), as pandas and Evidently compute it.
    pub fn std(&self) -> Option<f64> {
        (self.count > 1).then(|| (self.m2 / (self.count - 1) as f64).max(0.0).sqrt())
    }

    /// Population standard deviation (n), as numpy's default (Evidently's Wasserstein norm).
    pub fn std_population(&self) -> Option<f64> {
        (self.count > 0).then(|| (self.m2 / self.count as f64).max(0.0).sqrt())
    }

    /// The approximate `q`-quantile (0 ≤ q ≤ 1). For many queries, take a [`Self::view`]
    /// once (each call here builds one, as the KLL sketch itself does).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.view().quantile(q)
    }

    /// The approximate fraction of values ≤ `x`.
    pub fn cdf(&self, x: f64) -> Option<f64> {
        self.view().cdf(x)
    }

    /// A sorted snapshot for many rank/quantile queries (the drift metrics).
    pub fn view(&self) -> NumericView {
        NumericView(self.kll.sorted_view())
    }

    /// The documented single-sided normalised rank error of this sketch's k (99 % confidence):
    /// every quantile's rank is within this of the truth.
    pub fn rank_error_bound(&self) -> f64 {
        self.kll.normalized_rank_error()
    }
}

/// A sorted snapshot of a [`NumericSketch`].
pub struct NumericView(datasketches::kll::SortedView<KllFloat<f32>>);

impl NumericView {
    /// Approximate fraction of values ≤ `x`; `None` when the sketch is empty.
    pub fn cdf(&self, x: f64) -> Option<f64> {
        let v = KllFloat::<f32>::new(x as f32).ok()?;
        self.0.rank(&v, SearchCriteria::Inclusive)
    }

    /// Approximate `q`-quantile; `None` when the sketch is empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.0
            .quantile(q.clamp(0.0, 1.0), SearchCriteria::Inclusive)
            .ok()
            .flatten()
            .map(|v| f64::from(v.into_inner()))
    }
}

#[derive(Serialize, Deserialize)]
struct NumericWire {
    count: u64,
    nonfinite: u64,
    min: f64,
    max: f64,
    mean: f64,
    m2: f64,
    /// The KLL sketch in Apache DataSketches' own byte format.
    #[serde(with = "serde_bytes")]
    kll: Vec<u8>,
}

impl From<NumericSketch> for NumericWire {
    fn from(s: NumericSketch) -> Self {
        NumericWire {
            count: s.count,
            nonfinite: s.nonfinite,
            min: s.min,
            max: s.max,
            mean: s.mean,
            m2: s.m2,
            kll: s.kll.serialize(),
        }
    }
}

impl TryFrom<NumericWire> for NumericSketch {
    type Error = SketchError;

    /// Untrusted bytes: the sketch must decode and agree with the exact counters.
    fn try_from(w: NumericWire) -> Result<Self, SketchError> {
        let kll = KllSketch::<KllFloat<f32>>::deserialize(&w.kll)
            .map_err(|e| SketchError::Invalid(format!("KLL sketch: {e}")))?;
        let moments_ok = w.mean.is_finite() && w.m2.is_finite() && w.m2 >= 0.0;
        let range_ok = if w.count == 0 {
            w.min == f64::INFINITY && w.max == f64::NEG_INFINITY
        } else {
            w.min.is_finite() && w.max.is_finite() && w.min <= w.max
        };
        let counts_ok = w.count <= super::MAX_COUNT && w.nonfinite <= super::MAX_COUNT;
        if kll.n() != w.count || !moments_ok || !range_ok || !counts_ok {
            return Err(SketchError::Invalid(
                "numeric sketch: counters and moments disagree with the KLL sketch".into(),
            ));
        }
        Ok(NumericSketch {
            count: w.count,
            nonfinite: w.nonfinite,
            min: w.min,
            max: w.max,
            mean: w.mean,
            m2: w.m2,
            kll,
        })
    }
}
