//! Gates: canary against baseline, judged the same way for every rollout.
//!
//! Each gate compares the wave's devices on the new version (the canary) with devices of the
//! same selector still on the old version (the baseline), over the same wave, and returns a
//! [`GateVerdict`] with the values it measured. Below a gate's minimum of reporting devices or
//! requests the verdict is [`Outcome::Inconclusive`], never a pass: a handful of requests
//! without an error proves nothing (kayenta#426).
//!
//! - **install**: installed / targeted ≥ `min_install_ratio` (default 95 %); fails as soon as
//!   the failures make the ratio unreachable.
//! - **error rate**: a one-sided test for two proportions (pooled z), failing when the
//!   canary's error rate is higher than the baseline's at 99 % confidence *and* by more than
//!   `max_error_rate_increase` (absolute), so a significant but negligible difference passes.
//! - **latency**: canary p95 / baseline p95 ≤ `max_p95_ratio`, from the merged DDSketches
//!   (1 % relative error).
//! - **output drift**: every output column of the canary against the baseline's, with the
//!   model's drift rules; any drifted output fails.
//! - **quality**: prediction quality from ground truth (feedback matched on the devices):
//!   canary MAE / baseline MAE ≤ `max_mae_ratio` for a regression, baseline accuracy − canary
//!   accuracy ≤ `max_accuracy_drop` for a classifier, with at least `min_feedback` matched
//!   rows on each side (else inconclusive). Without any feedback on either side it is
//!   `not_configured`, which does not hold a rollout.

use edgefleet_common::drift::{ColumnDrift, DriftConfig, profile_drift};
use edgefleet_common::quality::ModelQuality;
use edgefleet_common::sketch::{LatencySketch, Profile};
use serde::{Deserialize, Serialize};

/// One-sided 99 % critical value of the standard normal.
const Z_99: f64 = 2.326;

/// Thresholds and minimums of every gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GateConfig {
    /// Fraction of a wave's devices that must install the version.
    pub min_install_ratio: f64,
    /// Largest acceptable rise of the error rate (absolute, 0.01 = one point).
    pub max_error_rate_increase: f64,
    /// Largest acceptable canary p95 / baseline p95.
    pub max_p95_ratio: f64,
    /// Whether a drifted output fails the wave.
    pub output_drift: bool,
    /// Below these, on either side, a metric gate is inconclusive.
    pub min_devices: u64,
    pub min_requests: u64,
    /// What a metric gate says when the baseline has no data at all (every device moved, or
    /// none of the old version reported): `inconclusive` (default) or `pass`.
    pub no_baseline: NoData,
    /// Largest acceptable canary MAE / baseline MAE (regressions, from ground truth).
    pub max_mae_ratio: f64,
    /// Largest acceptable fall of accuracy (classifiers, absolute: 0.02 = two points).
    pub max_accuracy_drop: f64,
    /// Below this many matched feedback rows, on either side, the quality gate is
    /// inconclusive.
    pub min_feedback: u64,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            min_install_ratio: 0.95,
            max_error_rate_increase: 0.01,
            max_p95_ratio: 1.5,
            output_drift: true,
            min_devices: 1,
            min_requests: 100,
            no_baseline: NoData::Inconclusive,
            max_mae_ratio: 1.1,
            max_accuracy_drop: 0.02,
            min_feedback: 50,
        }
    }
}

impl GateConfig {
    /// Every value that makes no sense, at once.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !(0.0..=1.0).contains(&self.min_install_ratio) {
            out.push("gates.min_install_ratio must be within 0..=1".into());
        }
        if !(self.max_error_rate_increase.is_finite() && self.max_error_rate_increase >= 0.0) {
            out.push("gates.max_error_rate_increase must be a non-negative number".into());
        }
        if !(self.max_p95_ratio.is_finite() && self.max_p95_ratio >= 1.0) {
            out.push("gates.max_p95_ratio must be a number ≥ 1".into());
        }
        if !(self.max_mae_ratio.is_finite() && self.max_mae_ratio >= 1.0) {
            out.push("gates.max_mae_ratio must be a number ≥ 1".into());
        }
        if !(0.0..=1.0).contains(&self.max_accuracy_drop) {
            out.push("gates.max_accuracy_drop must be within 0..=1".into());
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoData {
    Inconclusive,
    Pass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    Inconclusive,
    /// A gate with nothing to judge (quality without any ground truth, a last wave with
    /// no baseline left); does not hold a rollout.
    NotConfigured,
}

/// A gate's verdict, with what it measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateVerdict {
    pub gate: String,
    pub outcome: Outcome,
    /// What was measured and against what, for people.
    pub detail: String,
    #[serde(default)]
    pub canary: Option<f64>,
    #[serde(default)]
    pub baseline: Option<f64>,
    #[serde(default)]
    pub threshold: Option<f64>,
}

impl GateVerdict {
    fn new(gate: &str, outcome: Outcome, detail: String) -> Self {
        Self {
            gate: gate.into(),
            outcome,
            detail,
            canary: None,
            baseline: None,
            threshold: None,
        }
    }

    fn values(mut self, canary: f64, baseline: Option<f64>, threshold: f64) -> Self {
        self.canary = Some(canary);
        self.baseline = baseline;
        self.threshold = Some(threshold);
        self
    }
}

/// How many of a wave's devices installed the version, failed, or are still at it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallCounts {
    pub targeted: u64,
    pub installed: u64,
    pub failed: u64,
}

pub fn install(c: InstallCounts, cfg: &GateConfig) -> GateVerdict {
    let gate = "install";
    if c.targeted == 0 {
        return GateVerdict::new(gate, Outcome::Pass, "no device in this wave".into());
    }
    let ratio = c.installed as f64 / c.targeted as f64;
    let best = (c.targeted - c.failed) as f64 / c.targeted as f64;
    let detail = format!(
        "{} of {} installed, {} failed (need {:.0} %)",
        c.installed,
        c.targeted,
        c.failed,
        cfg.min_install_ratio * 100.0
    );
    let outcome = if ratio >= cfg.min_install_ratio {
        Outcome::Pass
    } else if best < cfg.min_install_ratio {
        Outcome::Fail
    } else {
        Outcome::Inconclusive
    };
    GateVerdict::new(gate, outcome, detail).values(ratio, None, cfg.min_install_ratio)
}

/// What one side (canary or baseline) reported during the wave.
#[derive(Debug, Clone)]
pub struct Side<'a> {
    pub devices: u64,
    pub requests: u64,
    pub errors: u64,
    pub latency: Option<&'a LatencySketch>,
    pub profile: Option<&'a Profile>,
}

impl Side<'_> {
    pub fn empty() -> Self {
        Side {
            devices: 0,
            requests: 0,
            errors: 0,
            latency: None,
            profile: None,
        }
    }

    fn calls(&self) -> u64 {
        self.requests.saturating_add(self.errors)
    }

    fn error_rate(&self) -> f64 {
        if self.calls() == 0 {
            0.0
        } else {
            self.errors as f64 / self.calls() as f64
        }
    }
}

/// Enough data on both sides? `Err` is the inconclusive (or no-baseline) verdict.
fn enough(gate: &str, canary: &Side, baseline: &Side, cfg: &GateConfig) -> Result<(), GateVerdict> {
    let short = |who: &str, s: &Side| {
        (s.devices < cfg.min_devices || s.calls() < cfg.min_requests).then(|| {
            format!(
                "{who}: {} devices and {} requests reported, below the minimum of {} and {}",
                s.devices,
                s.calls(),
                cfg.min_devices,
                cfg.min_requests
            )
        })
    };
    if let Some(why) = short("canary", canary) {
        return Err(GateVerdict::new(gate, Outcome::Inconclusive, why));
    }
    if baseline.calls() == 0 && cfg.no_baseline == NoData::Pass {
        return Err(GateVerdict::new(
            gate,
            Outcome::Pass,
            "no baseline data; passed by the no-data policy".into(),
        ));
    }
    if let Some(why) = short("baseline", baseline) {
        return Err(GateVerdict::new(gate, Outcome::Inconclusive, why));
    }
    Ok(())
}

/// One-sided pooled two-proportion z statistic (canary minus baseline), 0 when both are 0.
pub fn two_proportion_z(canary_errors: u64, canary_n: u64, base_errors: u64, base_n: u64) -> f64 {
    if canary_n == 0 || base_n == 0 {
        return 0.0;
    }
    let (p1, p2) = (
        canary_errors as f64 / canary_n as f64,
        base_errors as f64 / base_n as f64,
    );
    let pooled = (canary_errors + base_errors) as f64 / (canary_n + base_n) as f64;
    let se = (pooled * (1.0 - pooled) * (1.0 / canary_n as f64 + 1.0 / base_n as f64)).sqrt();
    if se == 0.0 { 0.0 } else { (p1 - p2) / se }
}

pub fn error_rate(canary: &Side, baseline: &Side, cfg: &GateConfig) -> GateVerdict {
    let gate = "error_rate";
    if let Err(v) = enough(gate, canary, baseline, cfg) {
        return v;
    }
    let (c, b) = (canary.error_rate(), baseline.error_rate());
    let z = two_proportion_z(
        canary.errors,
        canary.calls(),
        baseline.errors,
        baseline.calls(),
    );
    let worse = z > Z_99 && c - b > cfg.max_error_rate_increase;
    let detail = format!(
        "canary {:.3} % of {} calls, baseline {:.3} % of {}; z = {z:.2} (fails above {Z_99} and a rise over {:.3} points)",
        c * 100.0,
        canary.calls(),
        b * 100.0,
        baseline.calls(),
        cfg.max_error_rate_increase * 100.0
    );
    let outcome = if worse { Outcome::Fail } else { Outcome::Pass };
    GateVerdict::new(gate, outcome, detail).values(c, Some(b), cfg.max_error_rate_increase)
}

pub fn latency(canary: &Side, baseline: &Side, cfg: &GateConfig) -> GateVerdict {
    let gate = "latency_p95";
    if let Err(v) = enough(gate, canary, baseline, cfg) {
        return v;
    }
    let p95 = |s: &Side| s.latency.and_then(|l| l.quantile_us(0.95));
    let (Some(c), Some(b)) = (p95(canary), p95(baseline)) else {
        return GateVerdict::new(gate, Outcome::Inconclusive, "no latency recorded".into());
    };
    let ratio = if b > 0.0 { c / b } else { 1.0 };
    let detail = format!(
        "canary p95 {:.3} ms, baseline {:.3} ms: ×{ratio:.2} (fails above ×{})",
        c / 1000.0,
        b / 1000.0,
        cfg.max_p95_ratio
    );
    let outcome = if ratio > cfg.max_p95_ratio {
        Outcome::Fail
    } else {
        Outcome::Pass
    };
    GateVerdict::new(gate, outcome, detail).values(c / 1000.0, Some(b / 1000.0), cfg.max_p95_ratio)
}

/// Drift of the canary's outputs (columns named in `outputs`) against the baseline's.
pub fn output_drift(
    canary: &Side,
    baseline: &Side,
    outputs: &[String],
    rules: &DriftConfig,
    cfg: &GateConfig,
) -> GateVerdict {
    let gate = "output_drift";
    if !cfg.output_drift {
        return GateVerdict::new(gate, Outcome::NotConfigured, "turned off".into());
    }
    if let Err(v) = enough(gate, canary, baseline, cfg) {
        return v;
    }
    let (Some(c), Some(b)) = (canary.profile, baseline.profile) else {
        return GateVerdict::new(gate, Outcome::Inconclusive, "no output profile".into());
    };
    let drift: Vec<ColumnDrift> = profile_drift(b, c, rules)
        .into_iter()
        .filter(|d| outputs.contains(&d.column))
        .collect();
    if drift.is_empty() {
        return GateVerdict::new(
            gate,
            Outcome::Inconclusive,
            "no output column comparable between the versions".into(),
        );
    }
    let worst = drift
        .iter()
        .max_by(|a, b| (a.score / a.threshold).total_cmp(&(b.score / b.threshold)))
        .cloned();
    let drifted: Vec<&str> = drift
        .iter()
        .filter(|d| d.drifted)
        .map(|d| d.column.as_str())
        .collect();
    let detail = match &worst {
        Some(w) => format!(
            "worst output {}: {:?} {:.4} (threshold {}); drifted: {drifted:?}",
            w.column, w.method, w.score, w.threshold
        ),
        None => String::new(),
    };
    let outcome = if drifted.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail
    };
    let v = GateVerdict::new(gate, outcome, detail);
    match worst {
        Some(w) => v.values(w.score, None, w.threshold),
        None => v,
    }
}

/// Prediction quality from ground truth: the canary's matched feedback against the
/// baseline's, over the wave.
pub fn quality(
    canary: Option<&ModelQuality>,
    baseline: Option<&ModelQuality>,
    cfg: &GateConfig,
) -> GateVerdict {
    const GATE: &str = "quality";
    let matched = |q: Option<&ModelQuality>| q.map_or(0, |q| q.matched);
    if matched(canary) == 0 && matched(baseline) == 0 {
        return GateVerdict::new(
            GATE,
            Outcome::NotConfigured,
            "no ground truth reported: callers send true values to the devices' \
             /v2/models/{model}/feedback"
                .into(),
        );
    }
    if matched(canary) < cfg.min_feedback {
        return GateVerdict::new(
            GATE,
            Outcome::Inconclusive,
            format!(
                "canary: {} matched feedback rows, below the minimum of {}",
                matched(canary),
                cfg.min_feedback
            ),
        );
    }
    if matched(baseline) == 0 && cfg.no_baseline == NoData::Pass {
        return GateVerdict::new(
            GATE,
            Outcome::Pass,
            "no baseline feedback; passed by the no-data policy".into(),
        );
    }
    if matched(baseline) < cfg.min_feedback {
        return GateVerdict::new(
            GATE,
            Outcome::Inconclusive,
            format!(
                "baseline: {} matched feedback rows, below the minimum of {}",
                matched(baseline),
                cfg.min_feedback
            ),
        );
    }
    let (Some(c), Some(b)) = (canary, baseline) else {
        return GateVerdict::new(GATE, Outcome::Inconclusive, "no feedback".into());
    };
    if let (Some(cm), Some(bm)) = (c.mae(), b.mae()) {
        let ratio = if bm > 0.0 {
            cm / bm
        } else if cm > 0.0 {
            f64::INFINITY
        } else {
            1.0
        };
        let outcome = if ratio <= cfg.max_mae_ratio {
            Outcome::Pass
        } else {
            Outcome::Fail
        };
        return GateVerdict::new(
            GATE,
            outcome,
            format!(
                "MAE {cm:.4} against the baseline's {bm:.4} ({ratio:.3}×, limit {}×) on {} and {} matched rows",
                cfg.max_mae_ratio, c.matched, b.matched
            ),
        )
        .values(cm, Some(bm), cfg.max_mae_ratio);
    }
    if let (Some(ca), Some(ba)) = (c.accuracy(), b.accuracy()) {
        let drop = ba - ca;
        let outcome = if drop <= cfg.max_accuracy_drop {
            Outcome::Pass
        } else {
            Outcome::Fail
        };
        return GateVerdict::new(
            GATE,
            outcome,
            format!(
                "accuracy {ca:.4} against the baseline's {ba:.4} (a drop of {drop:.4}, limit {}) on {} and {} matched rows",
                cfg.max_accuracy_drop, c.matched, b.matched
            ),
        )
        .values(ca, Some(ba), cfg.max_accuracy_drop);
    }
    GateVerdict::new(
        GATE,
        Outcome::Inconclusive,
        "the canary and the baseline are scored differently (a regression against a classifier)"
            .into(),
    )
}

/// A canary-vs-baseline gate on a wave that left no device on the old version (the last
/// wave, at 100 %): there is nothing to compare with at the same time, and the earlier waves
/// were judged against a baseline, so it does not hold the rollout.
pub fn no_baseline_left(gate: &str) -> GateVerdict {
    GateVerdict::new(
        gate,
        Outcome::NotConfigured,
        "skipped: every selected device is on the new version, none is left as a baseline \
         (the earlier waves were judged against one)"
            .into(),
    )
}

/// The verdict of several gates: any fail fails; else any inconclusive; else pass.
pub fn combine(verdicts: &[GateVerdict]) -> Outcome {
    if verdicts.iter().any(|v| v.outcome == Outcome::Fail) {
        Outcome::Fail
    } else if verdicts.iter().any(|v| v.outcome == Outcome::Inconclusive) {
        Outcome::Inconclusive
    } else {
        Outcome::Pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(devices: u64, requests: u64, errors: u64) -> Side<'static> {
        Side {
            devices,
            requests,
            errors,
            latency: None,
            profile: None,
        }
    }

    #[test]
    fn install_passes_at_the_ratio_fails_when_unreachable_waits_otherwise() {
        let cfg = GateConfig::default();
        let c = |targeted, installed, failed| InstallCounts {
            targeted,
            installed,
            failed,
        };
        assert_eq!(install(c(20, 19, 1), &cfg).outcome, Outcome::Pass);
        assert_eq!(install(c(20, 10, 2), &cfg).outcome, Outcome::Fail);
        assert_eq!(install(c(20, 10, 1), &cfg).outcome, Outcome::Inconclusive);
        assert_eq!(install(c(1, 0, 1), &cfg).outcome, Outcome::Fail);
        assert_eq!(install(c(0, 0, 0), &cfg).outcome, Outcome::Pass);
    }

    #[test]
    fn few_samples_are_inconclusive_not_a_pass() {
        let cfg = GateConfig::default();
        let v = error_rate(&side(1, 20, 0), &side(5, 10_000, 0), &cfg);
        assert_eq!(v.outcome, Outcome::Inconclusive, "{}", v.detail);
        let v = error_rate(&side(2, 5_000, 0), &Side::empty(), &cfg);
        assert_eq!(v.outcome, Outcome::Inconclusive, "{}", v.detail);
        let pass_without = GateConfig {
            no_baseline: NoData::Pass,
            ..cfg
        };
        assert_eq!(
            error_rate(&side(2, 5_000, 0), &Side::empty(), &pass_without).outcome,
            Outcome::Pass
        );
    }

    #[test]
    fn sparse_errors_against_a_clean_baseline_fail() {
        // kayenta#426: 3 errors in 300 calls against none in 30,000 is not a pass.
        let cfg = GateConfig::default();
        let v = error_rate(&side(1, 297, 3), &side(10, 30_000, 0), &cfg);
        assert_eq!(
            v.outcome,
            Outcome::Pass,
            "1 % rise is at the limit: {}",
            v.detail
        );
        let v = error_rate(&side(1, 290, 10), &side(10, 30_000, 0), &cfg);
        assert_eq!(v.outcome, Outcome::Fail, "{}", v.detail);
        // Significant but negligible: passes.
        let v = error_rate(&side(5, 1_000_000, 2_000), &side(5, 1_000_000, 1_000), &cfg);
        assert_eq!(v.outcome, Outcome::Pass, "{}", v.detail);
    }

    #[test]
    fn the_z_statistic_matches_the_textbook() {
        // 45/500 against 30/500: pooled p = 0.075, se = 0.01666, z = 0.03 / se ≈ 1.80.
        let z = two_proportion_z(45, 500, 30, 500);
        assert!((z - 1.8009).abs() < 1e-3, "{z}");
        assert_eq!(two_proportion_z(0, 100, 0, 100), 0.0);
    }

    #[test]
    fn latency_fails_above_the_ratio() {
        let cfg = GateConfig::default();
        let (mut fast, mut slow) = (LatencySketch::default(), LatencySketch::default());
        for i in 0..1000 {
            fast.record_us(1000.0 + i as f64);
            slow.record_us(3000.0 + i as f64);
        }
        let with = |l: &'static LatencySketch| Side {
            latency: Some(l),
            ..side(3, 1000, 0)
        };
        let (fast, slow): (&'static _, &'static _) =
            (Box::leak(Box::new(fast)), Box::leak(Box::new(slow)));
        assert_eq!(
            latency(&with(slow), &with(fast), &cfg).outcome,
            Outcome::Fail
        );
        assert_eq!(
            latency(&with(fast), &with(slow), &cfg).outcome,
            Outcome::Pass
        );
        assert_eq!(
            latency(&with(fast), &with(fast), &cfg).outcome,
            Outcome::Pass
        );
    }

    #[test]
    fn any_fail_fails_and_inconclusive_beats_pass() {
        let v = |o| GateVerdict::new("g", o, String::new());
        assert_eq!(
            combine(&[v(Outcome::Pass), v(Outcome::NotConfigured)]),
            Outcome::Pass
        );
        assert_eq!(
            combine(&[v(Outcome::Pass), v(Outcome::Inconclusive)]),
            Outcome::Inconclusive
        );
        assert_eq!(
            combine(&[v(Outcome::Inconclusive), v(Outcome::Fail)]),
            Outcome::Fail
        );
    }

    fn mae_of(errors: &[f64]) -> ModelQuality {
        let mut q = ModelQuality::new("m", 1);
        for e in errors {
            q.score_values(&[*e], &[0.0], false).expect("score");
        }
        q
    }

    fn accuracy_of(correct: usize, wrong: usize) -> ModelQuality {
        let mut q = ModelQuality::new("m", 1);
        for i in 0..correct + wrong {
            let p = if i < correct { "a" } else { "b" };
            q.score_label(p, "a", None, false).expect("score");
        }
        q
    }

    #[test]
    fn quality_compares_mae_and_accuracy_with_minimums() {
        let cfg = GateConfig {
            min_feedback: 10,
            ..GateConfig::default()
        };
        let v = quality(None, None, &cfg);
        assert_eq!(v.outcome, Outcome::NotConfigured, "{}", v.detail);
        let (good, bad) = (mae_of(&[1.0; 20]), mae_of(&[1.5; 20]));
        let v = quality(Some(&good), Some(&good), &cfg);
        assert_eq!(v.outcome, Outcome::Pass, "{}", v.detail);
        assert_eq!((v.canary, v.baseline), (Some(1.0), Some(1.0)));
        let v = quality(Some(&bad), Some(&good), &cfg);
        assert_eq!(v.outcome, Outcome::Fail, "{}", v.detail);
        assert!(v.detail.contains("1.500"), "{}", v.detail);
        // Better than the baseline passes; short on either side is inconclusive.
        assert_eq!(
            quality(Some(&good), Some(&bad), &cfg).outcome,
            Outcome::Pass
        );
        let few = mae_of(&[1.0; 3]);
        let v = quality(Some(&few), Some(&good), &cfg);
        assert_eq!(v.outcome, Outcome::Inconclusive, "{}", v.detail);
        assert!(v.detail.contains("canary: 3 matched"), "{}", v.detail);
        let v = quality(Some(&good), None, &cfg);
        assert_eq!(v.outcome, Outcome::Inconclusive, "{}", v.detail);
        let lenient = GateConfig {
            no_baseline: NoData::Pass,
            ..cfg.clone()
        };
        assert_eq!(quality(Some(&good), None, &lenient).outcome, Outcome::Pass);
        // A perfect baseline: any canary error fails, none passes.
        let perfect = mae_of(&[0.0; 20]);
        assert_eq!(
            quality(Some(&good), Some(&perfect), &cfg).outcome,
            Outcome::Fail
        );
        assert_eq!(
            quality(Some(&perfect), Some(&perfect), &cfg).outcome,
            Outcome::Pass
        );
        // Classifiers: accuracy may fall by at most max_accuracy_drop.
        let (base, same, worse) = (
            accuracy_of(90, 10),
            accuracy_of(89, 11),
            accuracy_of(80, 20),
        );
        assert_eq!(
            quality(Some(&same), Some(&base), &cfg).outcome,
            Outcome::Pass
        );
        let v = quality(Some(&worse), Some(&base), &cfg);
        assert_eq!(v.outcome, Outcome::Fail, "{}", v.detail);
        assert_eq!((v.canary, v.baseline), (Some(0.8), Some(0.9)));
        // Differently scored versions cannot be compared.
        let v = quality(Some(&base), Some(&good), &cfg);
        assert_eq!(v.outcome, Outcome::Inconclusive, "{}", v.detail);
        assert!(
            GateConfig {
                max_mae_ratio: 0.5,
                max_accuracy_drop: 2.0,
                ..cfg
            }
            .problems()
            .len()
                == 2
        );
    }
}
