//! Categorical columns (integer-coded categories): frequent items (exact for up to
//! [`MAP_SIZE`]·¾ distinct values, Misra–Gries bounds beyond) plus a HyperLogLog distinct count,
//! both from Apache DataSketches and mergeable.

use datasketches::frequencies::{ErrorType, FrequentItemsSketch};
use datasketches::hll::{HllSketch, HllType, HllUnion};
use serde::{Deserialize, Serialize};

use super::SketchError;

/// Frequent-items map size: counts are exact below 96 distinct categories.
pub const MAP_SIZE: usize = 128;
/// Largest frequent-items map (lg) a decoded sketch may declare.
const MAX_LG_MAP: u8 = 12;
/// HLL lg(k): ≈ 3 % relative error on the distinct count, 1 KiB as HLL8.
pub const HLL_LG_K: u8 = 10;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "CategoricalWire", into = "CategoricalWire")]
pub struct CategoricalSketch {
    count: u64,
    nulls: u64,
    frequent: FrequentItemsSketch<i64>,
    hll: HllSketch,
}

impl Default for CategoricalSketch {
    fn default() -> Self {
        Self {
            count: 0,
            nulls: 0,
            frequent: FrequentItemsSketch::new(MAP_SIZE)
                .unwrap_or_else(|_| unreachable!("MAP_SIZE is a power of two")),
            hll: HllSketch::new(HLL_LG_K, HllType::Hll8)
                .unwrap_or_else(|_| unreachable!("HLL_LG_K is in range")),
        }
    }
}

impl CategoricalSketch {
    pub fn update(&mut self, category: i64) {
        self.count += 1;
        self.frequent.update(category);
        self.hll.update(category);
    }

    /// A missing value (NaN in a float-coded column).
    pub fn update_null(&mut self) {
        self.nulls += 1;
    }

    /// A float-coded category: integral values are categories, anything else a null.
    pub fn update_f64(&mut self, x: f64) {
        if x.is_finite() && x.fract() == 0.0 && x.abs() < 9.0e15 {
            self.update(x as i64);
        } else {
            self.update_null();
        }
    }

    pub fn merge(&mut self, other: &Self) {
        self.count = self.count.saturating_add(other.count);
        self.nulls = self.nulls.saturating_add(other.nulls);
        self.frequent.merge(&other.frequent);
        let mut union = HllUnion::new(HLL_LG_K).unwrap_or_else(|_| unreachable!("lg_k valid"));
        union.update(&self.hll);
        union.update(&other.hll);
        self.hll = union.to_sketch(HllType::Hll8);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn nulls(&self) -> u64 {
        self.nulls
    }

    /// Estimated number of distinct categories.
    pub fn distinct(&self) -> f64 {
        self.hll.estimate()
    }

    /// Categories with their estimated counts, most frequent first (exact while the map has
    /// not overflowed; otherwise no false negatives above the error bound).
    pub fn frequencies(&self) -> Vec<(i64, u64)> {
        self.frequent
            .frequent_items(ErrorType::NoFalseNegatives)
            .into_iter()
            .map(|r| (*r.item(), r.estimate()))
            .collect()
    }

    /// Upper bound on the error of any count from [`Self::frequencies`] (0 while exact).
    pub fn max_error(&self) -> u64 {
        self.frequent.maximum_error()
    }
}

#[derive(Serialize, Deserialize)]
struct CategoricalWire {
    count: u64,
    nulls: u64,
    /// DataSketches' frequent-items bytes (i64 items).
    #[serde(with = "serde_bytes")]
    frequent: Vec<u8>,
    /// DataSketches' HLL bytes.
    #[serde(with = "serde_bytes")]
    hll: Vec<u8>,
}

impl From<CategoricalSketch> for CategoricalWire {
    fn from(s: CategoricalSketch) -> Self {
        CategoricalWire {
            count: s.count,
            nulls: s.nulls,
            frequent: s.frequent.serialize(),
            hll: s.hll.serialize(),
        }
    }
}

impl TryFrom<CategoricalWire> for CategoricalSketch {
    type Error = SketchError;

    fn try_from(w: CategoricalWire) -> Result<Self, SketchError> {
        // The decoder allocates a 2^lg_cur map before looking at the items: check the header's
        // map sizes (bytes 3 and 4) first, or 40 bytes could demand gigabytes.
        if w.frequent.len() < 5 || w.frequent[3] > MAX_LG_MAP || w.frequent[4] > MAX_LG_MAP {
            return Err(SketchError::Invalid(format!(
                "frequent items: map size above 2^{MAX_LG_MAP}"
            )));
        }
        let frequent = FrequentItemsSketch::<i64>::deserialize(&w.frequent)
            .map_err(|e| SketchError::Invalid(format!("frequent items: {e}")))?;
        let hll = HllSketch::deserialize(&w.hll)
            .map_err(|e| SketchError::Invalid(format!("HLL: {e}")))?;
        // Item weights are checked against the total by the decoder; the error offset is not.
        let counts_ok = w.count <= super::MAX_COUNT
            && w.nulls <= super::MAX_COUNT
            && frequent.maximum_error() <= frequent.total_weight();
        if frequent.total_weight() != w.count || !counts_ok {
            return Err(SketchError::Invalid(
                "categorical sketch: counts disagree with the frequent-items sketch".into(),
            ));
        }
        if hll.lg_config_k() > 16 {
            return Err(SketchError::Invalid(
                "categorical sketch: HLL too large".into(),
            ));
        }
        Ok(CategoricalSketch {
            count: w.count,
            nulls: w.nulls,
            frequent,
            hll,
        })
    }
}
