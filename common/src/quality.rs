//! Prediction quality from ground truth: what a device learned about its predictions in one
//! window, per model version, and the rules that score a prediction against its truth.
//!
//! A caller reports the true value of an earlier prediction (the agent's feedback endpoint);
//! the agent matches it to the prediction it kept and scores it here. Everything is mergeable:
//! the hub adds windows of many devices and hours like the drift sketches.
//!
//! - Regression (a float output): every element's absolute error goes into a
//!   [`NumericSketch`] (k = [`ERROR_K`]), whose exact mean is the MAE, whose moments give the
//!   RMSE and whose KLL sketch gives error quantiles fleet-wide; the absolute percentage error
//!   (elements whose truth is not 0) is summed for the MAPE.
//! - Classification (an integer, boolean or text label output): correct count, log-loss when
//!   the model serves probabilities, and a confusion matrix of up to [`MAX_CLASSES`] labels
//!   (pairs beyond it are counted in `other`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::name;
use crate::sketch::{MAX_COUNT, NumericSketch};

/// Distinct labels one confusion matrix keeps.
pub const MAX_CLASSES: usize = 32;
/// Longest label, in bytes.
pub const MAX_LABEL_BYTES: usize = 64;
/// KLL's k for the absolute errors: rank error about 3 % (k = 200 would double the bytes a
/// window adds, and the daily byte budget is 2 MB per device).
pub const ERROR_K: u16 = 100;
/// Probabilities are clipped to `[EPSILON, 1]` before the log (scikit-learn's choice), so a
/// confident wrong answer costs about 34.5, not infinity.
pub const EPSILON: f64 = 1e-15;

/// One model version's quality in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelQuality {
    pub model: String,
    pub version: u64,
    /// Feedback rows matched to a prediction of this version and scored.
    pub matched: u64,
    /// Of `matched`: rows whose prediction was made in an earlier window.
    pub late: u64,
    /// Feedback rows for ids the device did not hold: never seen, expired or evicted. Counted
    /// against the version served when the feedback arrived.
    pub unknown: u64,
    pub regression: Option<RegressionQuality>,
    pub classification: Option<ClassificationQuality>,
}

/// Errors of a regression's predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionQuality {
    /// `|predicted − truth|` per output element.
    pub abs_error: NumericSketch,
    /// Sum of `|predicted − truth| / |truth|` over the `pct_elements` elements whose truth is
    /// not 0.
    pub pct_error_sum: f64,
    pub pct_elements: u64,
}

impl RegressionQuality {
    fn new() -> Self {
        Self {
            abs_error: NumericSketch::new(ERROR_K)
                .unwrap_or_else(|_| unreachable!("ERROR_K is valid")),
            pct_error_sum: 0.0,
            pct_elements: 0,
        }
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let ok = self.pct_error_sum.is_finite()
            && self.pct_error_sum >= 0.0
            && self.pct_elements <= self.abs_error.count()
            && self.abs_error.min().is_none_or(|m| m >= 0.0);
        if ok {
            Ok(())
        } else {
            Err("regression errors out of range".into())
        }
    }
}

/// A classifier's record against the truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationQuality {
    pub scored: u64,
    pub correct: u64,
    /// Sum of `−ln p(true class)` over the `log_loss_rows` rows that had probabilities.
    pub log_loss_sum: f64,
    pub log_loss_rows: u64,
    /// (truth, predicted) → rows, sorted, at most [`MAX_CLASSES`] distinct labels.
    pub confusion: Vec<ConfusionCell>,
    /// Rows whose labels did not fit in the matrix.
    pub other: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionCell {
    pub truth: String,
    pub predicted: String,
    pub rows: u64,
}

/// What a model's predictions are scored as: the rule both the agent (scoring) and the hub
/// (checking what devices report) apply to the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// The first output is floating point: each element of a row is a predicted value.
    Regression,
    /// The first output is an integer, boolean or text label.
    Classification,
}

impl Task {
    /// From the manifest's first output; none for a model without outputs.
    pub fn of(manifest: &crate::ModelManifest) -> Option<Task> {
        use crate::DataType;
        let first = manifest.outputs.first()?;
        Some(match first.datatype {
            DataType::Fp16 | DataType::Fp32 | DataType::Fp64 => Task::Regression,
            _ => Task::Classification,
        })
    }
}

fn invalid(detail: impl Into<String>) -> Error {
    Error::Malformed {
        what: "quality",
        detail: detail.into(),
    }
}

impl ModelQuality {
    pub fn new(model: impl Into<String>, version: u64) -> Self {
        Self {
            model: model.into(),
            version,
            matched: 0,
            late: 0,
            unknown: 0,
            regression: None,
            classification: None,
        }
    }

    /// What this quality scored, if it scored anything yet.
    pub fn task(&self) -> Option<Task> {
        if self.regression.is_some() {
            Some(Task::Regression)
        } else if self.classification.is_some() {
            Some(Task::Classification)
        } else {
            None
        }
    }

    /// Nothing to report: no feedback arrived.
    pub fn is_empty(&self) -> bool {
        self.matched == 0 && self.unknown == 0
    }

    /// Scores one regression row: `predicted` and `truth` element by element (same length,
    /// finite truth; the caller checks the shape and says what was wrong).
    pub fn score_values(&mut self, predicted: &[f64], truth: &[f64], late: bool) -> Result<()> {
        if predicted.len() != truth.len() {
            return Err(invalid(format!(
                "{} true values for a prediction of {}",
                truth.len(),
                predicted.len()
            )));
        }
        if self.classification.is_some() {
            return Err(invalid("a classifier's prediction scored as a regression"));
        }
        if predicted.iter().chain(truth).any(|v| !v.is_finite()) {
            return Err(invalid(
                "predictions and true values must be finite numbers",
            ));
        }
        let r = self.regression.get_or_insert_with(RegressionQuality::new);
        for (p, t) in predicted.iter().zip(truth) {
            let e = (p - t).abs();
            r.abs_error.update(e);
            if *t != 0.0 {
                r.pct_error_sum += e / t.abs();
                r.pct_elements += 1;
            }
        }
        self.count(late);
        Ok(())
    }

    /// Scores one classification row. `p_true`: the probability the model gave the true label,
    /// when it serves probabilities.
    pub fn score_label(
        &mut self,
        predicted: &str,
        truth: &str,
        p_true: Option<f64>,
        late: bool,
    ) -> Result<()> {
        if self.regression.is_some() {
            return Err(invalid("a regression's prediction scored as a classifier"));
        }
        if truth.len() > MAX_LABEL_BYTES || predicted.len() > MAX_LABEL_BYTES {
            return Err(invalid(format!(
                "labels are at most {MAX_LABEL_BYTES} bytes"
            )));
        }
        let c = self
            .classification
            .get_or_insert_with(ClassificationQuality::default);
        c.scored += 1;
        if predicted == truth {
            c.correct += 1;
        }
        if let Some(p) = p_true.filter(|p| p.is_finite()) {
            c.log_loss_sum += -p.clamp(EPSILON, 1.0).ln();
            c.log_loss_rows += 1;
        }
        c.add_cell(truth, predicted, 1);
        self.count(late);
        Ok(())
    }

    fn count(&mut self, late: bool) {
        self.matched += 1;
        if late {
            self.late += 1;
        }
    }

    /// Adds `other` (the same model version) in; refused, nothing changed, when one scored a
    /// regression and the other a classifier.
    pub fn merge(&mut self, other: &ModelQuality) -> Result<()> {
        if (self.regression.is_some() && other.classification.is_some())
            || (self.classification.is_some() && other.regression.is_some())
        {
            return Err(invalid(format!(
                "model {} v{}: a regression's quality cannot merge with a classifier's",
                self.model, self.version
            )));
        }
        match (&mut self.regression, &other.regression) {
            (Some(a), Some(b)) => {
                // The sketch's merge changes nothing when it refuses: `self` stays as it was.
                a.abs_error
                    .merge(&b.abs_error)
                    .map_err(|e| invalid(e.to_string()))?;
                a.pct_error_sum += b.pct_error_sum;
                a.pct_elements = a.pct_elements.saturating_add(b.pct_elements);
            }
            (None, Some(b)) => self.regression = Some(b.clone()),
            _ => {}
        }
        match (&mut self.classification, &other.classification) {
            (Some(a), Some(b)) => a.merge(b),
            (None, Some(b)) => self.classification = Some(b.clone()),
            _ => {}
        }
        self.matched = self.matched.saturating_add(other.matched);
        self.late = self.late.saturating_add(other.late);
        self.unknown = self.unknown.saturating_add(other.unknown);
        Ok(())
    }

    /// Checks a quality received from outside.
    pub fn validate(&self) -> Result<()> {
        name::validate(&self.model)?;
        if self.matched > MAX_COUNT || self.unknown > MAX_COUNT || self.late > self.matched {
            return Err(invalid(format!(
                "model {}: counts out of range (matched {}, late {}, unknown {})",
                self.model, self.matched, self.late, self.unknown
            )));
        }
        if self.regression.is_some() && self.classification.is_some() {
            return Err(invalid(format!(
                "model {}: both a regression and a classifier",
                self.model
            )));
        }
        if let Some(c) = &self.classification {
            c.validate()
                .map_err(|e| invalid(format!("model {}: {e}", self.model)))?;
        }
        if let Some(r) = &self.regression {
            r.validate()
                .map_err(|e| invalid(format!("model {}: {e}", self.model)))?;
        }
        Ok(())
    }

    /// Mean absolute error.
    pub fn mae(&self) -> Option<f64> {
        self.regression.as_ref()?.abs_error.mean()
    }

    /// Root mean squared error: from the absolute errors' mean and population variance.
    pub fn rmse(&self) -> Option<f64> {
        let r = self.regression.as_ref()?;
        let (mean, std) = (r.abs_error.mean()?, r.abs_error.std_population()?);
        Some((std * std + mean * mean).sqrt())
    }

    /// Mean absolute percentage error, as a fraction (0.1 = 10 %), over truths that are not 0.
    pub fn mape(&self) -> Option<f64> {
        let r = self.regression.as_ref()?;
        (r.pct_elements > 0).then(|| r.pct_error_sum / r.pct_elements as f64)
    }

    /// The `q`-quantile of the absolute error.
    pub fn abs_error_quantile(&self, q: f64) -> Option<f64> {
        self.regression.as_ref()?.abs_error.quantile(q)
    }

    pub fn accuracy(&self) -> Option<f64> {
        let c = self.classification.as_ref()?;
        (c.scored > 0).then(|| c.correct as f64 / c.scored as f64)
    }

    /// Mean log-loss over the rows that had probabilities.
    pub fn log_loss(&self) -> Option<f64> {
        let c = self.classification.as_ref()?;
        (c.log_loss_rows > 0).then(|| c.log_loss_sum / c.log_loss_rows as f64)
    }
}

impl Default for ClassificationQuality {
    fn default() -> Self {
        Self {
            scored: 0,
            correct: 0,
            log_loss_sum: 0.0,
            log_loss_rows: 0,
            confusion: Vec::new(),
            other: 0,
        }
    }
}

impl ClassificationQuality {
    fn labels(&self) -> std::collections::BTreeSet<&str> {
        self.confusion
            .iter()
            .flat_map(|c| [c.truth.as_str(), c.predicted.as_str()])
            .collect()
    }

    /// Adds `rows` to a cell, or to `other` when the matrix would pass [`MAX_CLASSES`] labels.
    fn add_cell(&mut self, truth: &str, predicted: &str, rows: u64) {
        let at = self.confusion.binary_search_by(|c| {
            (c.truth.as_str(), c.predicted.as_str()).cmp(&(truth, predicted))
        });
        match at {
            Ok(i) => self.confusion[i].rows = self.confusion[i].rows.saturating_add(rows),
            Err(i) => {
                let labels = self.labels();
                let new = [truth, predicted]
                    .iter()
                    .filter(|l| !labels.contains(*l))
                    .collect::<std::collections::BTreeSet<_>>()
                    .len();
                if labels.len() + new > MAX_CLASSES {
                    self.other = self.other.saturating_add(rows);
                } else {
                    self.confusion.insert(
                        i,
                        ConfusionCell {
                            truth: truth.to_owned(),
                            predicted: predicted.to_owned(),
                            rows,
                        },
                    );
                }
            }
        }
    }

    fn merge(&mut self, other: &ClassificationQuality) {
        self.scored = self.scored.saturating_add(other.scored);
        self.correct = self.correct.saturating_add(other.correct);
        self.log_loss_sum += other.log_loss_sum;
        self.log_loss_rows = self.log_loss_rows.saturating_add(other.log_loss_rows);
        self.other = self.other.saturating_add(other.other);
        for c in &other.confusion {
            self.add_cell(&c.truth, &c.predicted, c.rows);
        }
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let counts_ok = self.scored <= MAX_COUNT
            && self.correct <= self.scored
            && self.log_loss_rows <= self.scored
            && self.other <= self.scored;
        if !counts_ok || !self.log_loss_sum.is_finite() || self.log_loss_sum < 0.0 {
            return Err("classification counts out of range".into());
        }
        let mut cells: u64 = 0;
        let mut seen = BTreeMap::new();
        for c in &self.confusion {
            if c.truth.len() > MAX_LABEL_BYTES || c.predicted.len() > MAX_LABEL_BYTES {
                return Err(format!("labels are at most {MAX_LABEL_BYTES} bytes"));
            }
            if seen.insert((&c.truth, &c.predicted), ()).is_some() {
                return Err("a confusion cell appears twice".into());
            }
            cells = cells.saturating_add(c.rows);
        }
        if self.labels().len() > MAX_CLASSES {
            return Err(format!("more than {MAX_CLASSES} labels"));
        }
        if cells.saturating_add(self.other) != self.scored {
            return Err("the confusion matrix does not add up to the scored rows".into());
        }
        let sorted = self
            .confusion
            .windows(2)
            .all(|w| (&w[0].truth, &w[0].predicted) < (&w[1].truth, &w[1].predicted));
        if !sorted {
            return Err("confusion cells are not sorted".into());
        }
        Ok(())
    }

    /// Rows per (truth, predicted).
    pub fn cells(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.confusion
            .iter()
            .map(|c| (c.truth.as_str(), c.predicted.as_str(), c.rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_figures_match_a_hand_computation() {
        let pairs = [(10.0, 12.0), (5.0, 4.0), (3.0, 3.0), (8.0, 0.0)];
        let mut q = ModelQuality::new("demand", 1);
        for (p, t) in pairs {
            q.score_values(&[p], &[t], false).expect("score");
        }
        let n = pairs.len() as f64;
        let mae = pairs.iter().map(|(p, t)| (p - t).abs()).sum::<f64>() / n;
        let rmse = (pairs.iter().map(|(p, t)| (p - t) * (p - t)).sum::<f64>() / n).sqrt();
        // Truth 0 has no percentage error.
        let mape = (2.0 / 12.0 + 1.0 / 4.0 + 0.0) / 3.0;
        assert!((q.mae().expect("mae") - mae).abs() < 1e-12);
        assert!((q.rmse().expect("rmse") - rmse).abs() < 1e-12);
        assert!((q.mape().expect("mape") - mape).abs() < 1e-12);
        assert_eq!(q.matched, 4);
        assert!(q.score_values(&[1.0, 2.0], &[1.0], false).is_err());
        assert!(q.score_values(&[1.0], &[f64::NAN], false).is_err());
        assert_eq!(q.matched, 4, "refused rows are not counted");
        let mut neg = q.clone();
        if let Some(r) = neg.regression.as_mut() {
            r.pct_error_sum = -1.0;
        }
        assert!(neg.validate().is_err());
        assert!(q.score_label("a", "a", None, false).is_err());
    }

    #[test]
    fn classification_figures_and_the_class_cap() {
        let mut q = ModelQuality::new("churn", 3);
        q.score_label("1", "1", Some(0.9), false).expect("score");
        q.score_label("0", "1", Some(0.2), true).expect("score");
        q.score_label("1", "0", None, false).expect("score");
        assert_eq!(q.accuracy(), Some(1.0 / 3.0));
        let ll = (-(0.9f64).ln() - (0.2f64).ln()) / 2.0;
        assert!((q.log_loss().expect("ll") - ll).abs() < 1e-12);
        assert_eq!((q.matched, q.late), (3, 1));
        let c = q.classification.clone().expect("classifier");
        assert_eq!(
            c.cells().collect::<Vec<_>>(),
            vec![("0", "1", 1), ("1", "0", 1), ("1", "1", 1)]
        );
        // Past the cap, rows still count, in `other`.
        for i in 0..40 {
            let l = format!("c{i}");
            q.score_label(&l, &l, None, false).expect("score");
        }
        let c = q.classification.clone().expect("classifier");
        assert_eq!(c.labels().len(), MAX_CLASSES);
        assert_eq!(c.scored, 43);
        assert_eq!(c.other, 43 - c.cells().map(|x| x.2).sum::<u64>());
        q.validate().expect("valid");
    }

    #[test]
    fn merging_adds_and_refuses_mixed_kinds() {
        let mut a = ModelQuality::new("m", 1);
        a.score_values(&[1.0], &[2.0], false).expect("score");
        let mut b = ModelQuality::new("m", 1);
        b.score_values(&[5.0], &[2.0], true).expect("score");
        b.unknown = 2;
        a.merge(&b).expect("merge");
        assert_eq!((a.matched, a.late, a.unknown), (2, 1, 2));
        assert_eq!(a.mae(), Some(2.0));
        let mut c = ModelQuality::new("m", 1);
        c.score_label("x", "y", None, false).expect("score");
        let before = a.clone();
        assert!(a.merge(&c).is_err());
        assert_eq!(a, before);
        let mut d = ModelQuality::new("m", 1);
        d.merge(&c).expect("merge into empty");
        d.merge(&c).expect("merge");
        assert_eq!(d.accuracy(), Some(0.0));
        assert_eq!(
            d.classification.as_ref().map(|c| c.confusion[0].rows),
            Some(2)
        );
    }

    #[test]
    fn bad_quality_is_refused_with_a_reason() {
        let mut q = ModelQuality::new("m", 1);
        q.score_label("a", "b", None, false).expect("score");
        let mut late = q.clone();
        late.late = 5;
        assert!(late.validate().is_err());
        let mut lie = q.clone();
        if let Some(c) = lie.classification.as_mut() {
            c.correct = 9;
        }
        assert!(lie.validate().is_err());
        let mut dup = q.clone();
        if let Some(c) = dup.classification.as_mut() {
            c.confusion.push(c.confusion[0].clone());
            c.scored += 1;
        }
        assert!(dup.validate().is_err());
        let mut both = q.clone();
        both.regression = Some(RegressionQuality::new());
        assert!(both.validate().is_err());
        let mut nan = q;
        if let Some(c) = nan.classification.as_mut() {
            c.log_loss_sum = f64::NAN;
        }
        assert!(nan.validate().is_err());
    }
}
