//! Drift metrics between a reference profile (the training data) and a current one (a window
//! on a device, or the fleet's merge): pure functions of two sketches.
//!
//! Numeric columns (bins at the reference's deciles, the sketch-friendly equivalent of
//! Evidently's Sturges bins):
//! - **KS**: max |F_ref(x) − F_cur(x)| over both sketches' quantiles at 201 ranks.
//! - **PSI**: Σ (c − r)·ln(c / r) over the decile bins, empty bins floored at 1e-4.
//! - **Jensen–Shannon distance**: √JS divergence (natural log, as scipy) over the same bins.
//! - **Wasserstein, normalised**: mean |Q_ref(q) − Q_cur(q)| over 100 mid-quantiles, divided by
//!   the reference's population standard deviation (floored at 0.001, as Evidently).
//!
//! Categorical columns: Jensen–Shannon distance and the chi-square test of the current counts
//! against the reference proportions (statistic and p-value).
//!
//! Defaults follow Evidently: Wasserstein-normed ≥ 0.1 (numeric) and JS ≥ 0.1 (categorical)
//! mean drift; PSI's customary 0.2; KS 0.1; chi-square p < 0.05. Each is configurable per
//! model and per column ([`DriftConfig`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sketch::{CategoricalSketch, ColumnSketch, NumericSketch, Profile};

/// Floor for an empty bin's proportion (PSI, JS).
pub const EMPTY_BIN: f64 = 1e-4;
/// Floor for the reference standard deviation (Wasserstein).
pub const MIN_STD: f64 = 0.001;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NumericDrift {
    pub ks: f64,
    pub psi: f64,
    pub js: f64,
    pub wasserstein_norm: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CategoricalDrift {
    pub js: f64,
    pub chi2: f64,
    pub p_value: f64,
}

/// The statistic a column's drift decision uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Wasserstein,
    Psi,
    Ks,
    Js,
    ChiSquare,
}

/// Which method and threshold decide drift; per model, with per-column overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    pub numeric: Rule,
    pub categorical: Rule,
    pub columns: BTreeMap<String, Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub method: Method,
    /// Drift when the score is ≥ this (for chi-square: when the p-value is < this).
    pub threshold: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            numeric: Rule {
                method: Method::Wasserstein,
                threshold: 0.1,
            },
            categorical: Rule {
                method: Method::Js,
                threshold: 0.1,
            },
            columns: BTreeMap::new(),
        }
    }
}

impl Method {
    /// The customary threshold for this method.
    pub fn default_threshold(self) -> f64 {
        match self {
            Method::Wasserstein | Method::Js | Method::Ks => 0.1,
            Method::Psi => 0.2,
            Method::ChiSquare => 0.05,
        }
    }
}

/// One column's drift, as the hub stores and the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDrift {
    pub column: String,
    pub method: Method,
    pub score: f64,
    pub threshold: f64,
    pub drifted: bool,
    pub numeric: Option<NumericDrift>,
    pub categorical: Option<CategoricalDrift>,
    /// Values the current window had for this column.
    pub count: u64,
}

/// Drift of every column present in both profiles (and non-empty in both).
pub fn profile_drift(
    reference: &Profile,
    current: &Profile,
    config: &DriftConfig,
) -> Vec<ColumnDrift> {
    let mut out = Vec::new();
    for cur in &current.columns {
        let Some(re) = reference.column(&cur.name) else {
            continue;
        };
        let (numeric, categorical, count) = match (&re.sketch, &cur.sketch) {
            (ColumnSketch::Numeric(r), ColumnSketch::Numeric(c)) => {
                (numeric_drift(r, c), None, c.count())
            }
            (ColumnSketch::Categorical(r), ColumnSketch::Categorical(c)) => {
                (None, categorical_drift(r, c), c.count())
            }
            _ => continue,
        };
        if numeric.is_none() && categorical.is_none() {
            continue;
        }
        let default = if numeric.is_some() {
            config.numeric
        } else {
            config.categorical
        };
        let rule = config.columns.get(&cur.name).copied().unwrap_or(default);
        let score = match (rule.method, numeric, categorical) {
            (Method::Wasserstein, Some(n), _) => Some(n.wasserstein_norm),
            (Method::Psi, Some(n), _) => Some(n.psi),
            (Method::Ks, Some(n), _) => Some(n.ks),
            (Method::Js, Some(n), _) => Some(n.js),
            (Method::Js, _, Some(c)) => Some(c.js),
            (Method::ChiSquare, _, Some(c)) => Some(c.p_value),
            _ => None,
        };
        // A rule that does not fit the column's kind (chi-square for a numeric column, say)
        // falls back to the built-in default for that kind, never to a mismatched rule.
        let (rule, score) = match score {
            Some(s) => (rule, s),
            None => {
                let builtin = DriftConfig::default();
                match (numeric, categorical) {
                    (Some(n), _) => (builtin.numeric, n.wasserstein_norm),
                    (_, Some(c)) => (builtin.categorical, c.js),
                    _ => continue,
                }
            }
        };
        let drifted = if rule.method == Method::ChiSquare {
            score < rule.threshold
        } else {
            score >= rule.threshold
        };
        out.push(ColumnDrift {
            column: cur.name.clone(),
            method: rule.method,
            score,
            threshold: rule.threshold,
            drifted,
            numeric,
            categorical,
            count,
        });
    }
    out
}

/// Every numeric metric; `None` when either sketch is empty.
pub fn numeric_drift(reference: &NumericSketch, current: &NumericSketch) -> Option<NumericDrift> {
    if reference.count() == 0 || current.count() == 0 {
        return None;
    }
    let (r, c) = (reference.view(), current.view());

    let mut ks: f64 = 0.0;
    for i in 0..=200 {
        let q = f64::from(i) / 200.0;
        for x in [r.quantile(q)?, c.quantile(q)?] {
            ks = ks.max((r.cdf(x)? - c.cdf(x)?).abs());
        }
    }

    let mut edges: Vec<f64> = (1..10)
        .filter_map(|i| r.quantile(f64::from(i) / 10.0))
        .collect();
    edges.dedup();
    let props = |cdf: &dyn Fn(f64) -> Option<f64>| -> Option<Vec<f64>> {
        let mut out = Vec::with_capacity(edges.len() + 1);
        let mut prev = 0.0;
        for &e in &edges {
            let f = cdf(e)?;
            out.push((f - prev).max(0.0));
            prev = f;
        }
        out.push((1.0 - prev).max(0.0));
        Some(out)
    };
    let rp = props(&|x| r.cdf(x))?;
    let cp = props(&|x| c.cdf(x))?;
    let (psi, js) = psi_js(&rp, &cp);

    let std = reference.std_population().unwrap_or(0.0).max(MIN_STD);
    let mut w = 0.0;
    for i in 0..100 {
        let q = (f64::from(i) + 0.5) / 100.0;
        w += (r.quantile(q)? - c.quantile(q)?).abs();
    }
    Some(NumericDrift {
        ks,
        psi,
        js,
        wasserstein_norm: w / 100.0 / std,
    })
}

/// PSI and JS distance of two binned distributions (floored at [`EMPTY_BIN`], renormalised).
pub fn psi_js(reference: &[f64], current: &[f64]) -> (f64, f64) {
    let norm = |v: &[f64]| -> Vec<f64> {
        let v: Vec<f64> = v.iter().map(|p| p.max(EMPTY_BIN)).collect();
        let s: f64 = v.iter().sum();
        v.iter().map(|p| p / s).collect()
    };
    let (r, c) = (norm(reference), norm(current));
    let psi = r.iter().zip(&c).map(|(r, c)| (c - r) * (c / r).ln()).sum();
    let js = r
        .iter()
        .zip(&c)
        .map(|(r, c)| {
            let m = (r + c) / 2.0;
            0.5 * r * (r / m).ln() + 0.5 * c * (c / m).ln()
        })
        .sum::<f64>()
        .max(0.0)
        .sqrt();
    (psi, js)
}

/// JS distance and chi-square between category distributions; `None` when either is empty.
pub fn categorical_drift(
    reference: &CategoricalSketch,
    current: &CategoricalSketch,
) -> Option<CategoricalDrift> {
    if reference.count() == 0 || current.count() == 0 {
        return None;
    }
    let (rf, cf) = (reference.frequencies(), current.frequencies());
    let mut cats: Vec<i64> = rf.iter().chain(&cf).map(|(k, _)| *k).collect();
    cats.sort_unstable();
    cats.dedup();
    let counts = |f: &[(i64, u64)], total: u64| -> Vec<f64> {
        let mut v: Vec<f64> = cats
            .iter()
            .map(|k| {
                f.iter()
                    .find(|(x, _)| x == k)
                    .map_or(0.0, |(_, n)| *n as f64)
            })
            .collect();
        // Mass the frequent-items sketch did not list (beyond its exact range).
        let listed: f64 = v.iter().sum();
        v.push((total as f64 - listed).max(0.0));
        v
    };
    let rc = counts(&rf, reference.count());
    let cc = counts(&cf, current.count());
    let (rt, ct) = (rc.iter().sum::<f64>(), cc.iter().sum::<f64>());
    let rp: Vec<f64> = rc.iter().map(|x| x / rt).collect();
    let cp: Vec<f64> = cc.iter().map(|x| x / ct).collect();
    let (_, js) = psi_js(&rp, &cp);
    let mut chi2 = 0.0;
    let mut bins = 0u32;
    for (r, c) in rp.iter().zip(&cc) {
        if *r == 0.0 && *c == 0.0 {
            continue;
        }
        let expected = r.max(EMPTY_BIN) * ct;
        chi2 += (c - expected).powi(2) / expected;
        bins += 1;
    }
    let df = f64::from(bins.saturating_sub(1).max(1));
    Some(CategoricalDrift {
        js,
        chi2,
        p_value: chi_square_sf(chi2, df),
    })
}

/// P(X ≥ x) for a chi-square variable with `df` degrees of freedom (statrs).
pub fn chi_square_sf(x: f64, df: f64) -> f64 {
    use statrs::distribution::{ChiSquared, ContinuousCDF};
    match ChiSquared::new(df) {
        Ok(d) if x.is_finite() => d.sf(x.max(0.0)),
        _ => 0.0,
    }
}
