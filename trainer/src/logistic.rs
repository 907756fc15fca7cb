//! Logistic regression for a binary classifier (labels 0 and 1): the features standardised as
//! ridge does (missing values imputed with the mean), then Newton's method on the mean log-loss
//! plus `alpha/2 ‖β‖²` on the standardised coefficients (not the intercept), each step a
//! Cholesky solve of the penalised Hessian; folded back to the raw scale. The fitted model is a
//! [`Linear`] whose value is the log-odds of label 1. Summation order is fixed, so the result
//! is the same bits on every run.

use crate::dataset::Dataset;
use crate::error::{TrainError, TrainResult};
use crate::ridge::{Linear, moments, solve_spd, standardised};

/// Newton steps before giving up; a penalised log-loss converges in about ten.
const MAX_STEPS: usize = 100;
/// Converged when no coefficient moves by more than this in a step.
const TOLERANCE: f64 = 1e-10;

/// The logistic function, written to be stable for large |s|.
pub fn sigmoid(s: f64) -> f64 {
    if s >= 0.0 {
        1.0 / (1.0 + (-s).exp())
    } else {
        let e = s.exp();
        e / (1.0 + e)
    }
}

pub fn fit(d: &Dataset, alpha: f64) -> TrainResult<Linear> {
    let (n, w) = (d.rows(), d.width());
    let positives = d.y.iter().filter(|&&y| y == 1.0).count();
    if positives == 0 || positives == n {
        return Err(TrainError::Fit(format!(
            "every one of the {n} rows has label {}: a classifier needs rows of both labels",
            if positives == 0 { 0 } else { 1 }
        )));
    }
    let (means, stds) = moments(d)?;
    let z = |i: usize, j: usize| standardised(d, &means, &stds, i, j);
    // β over the standardised features, then the intercept; it starts at the base rate's
    // log-odds, the coefficients at 0.
    let m = w + 1;
    let mut beta = vec![0.0; m];
    let rate = positives as f64 / n as f64;
    beta[w] = (rate / (1.0 - rate)).ln();
    let mut row = vec![0.0; m];
    row[w] = 1.0;
    for _ in 0..MAX_STEPS {
        let mut h = vec![0.0; m * m];
        let mut g = vec![0.0; m];
        for i in 0..n {
            for (j, r) in row.iter_mut().take(w).enumerate() {
                *r = z(i, j);
            }
            let s: f64 = row.iter().zip(&beta).map(|(r, b)| r * b).sum();
            let p = sigmoid(s);
            let (residual, weight) = (d.y[i] - p, p * (1.0 - p));
            for j in 0..m {
                g[j] += row[j] * residual;
                for k in 0..=j {
                    h[j * m + k] += weight * row[j] * row[k];
                }
            }
        }
        for j in 0..m {
            for k in 0..=j {
                h[j * m + k] /= n as f64;
                h[k * m + j] = h[j * m + k];
            }
            g[j] /= n as f64;
        }
        for j in 0..w {
            // A constant feature's row is all zeros: 1 on its diagonal keeps it at 0.
            h[j * m + j] += if stds[j] == 0.0 { 1.0 } else { alpha };
            g[j] -= alpha * beta[j];
        }
        let step = solve_spd(&mut h, &g, m).ok_or_else(|| {
            TrainError::Fit(
                "the log-loss has no unique minimum (separable or collinear features): raise alpha"
                    .into(),
            )
        })?;
        let mut largest = 0.0f64;
        for (b, s) in beta.iter_mut().zip(&step) {
            *b += s;
            largest = largest.max(s.abs());
        }
        if !largest.is_finite() {
            break;
        }
        if largest < TOLERANCE {
            return Ok(Linear::unstandardise(&beta[..w], beta[w], means, &stds));
        }
    }
    Err(TrainError::Fit(format!(
        "logistic regression did not converge in {MAX_STEPS} Newton steps: raise alpha"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows whose label is drawn with P(1) = σ(−1 + 0.8 a − 0.5 b), a deterministic draw.
    fn noisy(n: usize) -> Dataset {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for i in 0..n {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            let (a, b) = ((i % 17) as f64 - 8.0, ((i * 5) % 13) as f64 - 6.0);
            x.extend([a, b, 3.0]);
            y.push(f64::from(u < sigmoid(-1.0 + 0.8 * a - 0.5 * b)));
        }
        Dataset::of(x, y, 3)
    }

    #[test]
    fn recovers_the_log_odds_of_a_logistic_model() {
        let m = fit(&noisy(20_000), 0.0).expect("fit");
        assert!((m.weights[0] - 0.8).abs() < 0.05, "{m:?}");
        assert!((m.weights[1] + 0.5).abs() < 0.05, "{m:?}");
        assert_eq!(m.weights[2], 0.0, "a constant feature");
        assert!((m.bias + 1.0).abs() < 0.1, "{m:?}");
        // The same bits on every run.
        assert_eq!(m, fit(&noisy(20_000), 0.0).expect("fit"));
    }

    #[test]
    fn one_label_only_or_separable_rows_are_refused_with_the_reason() {
        let x: Vec<f64> = (0..10).map(f64::from).collect();
        let err = fit(&Dataset::of(x.clone(), vec![1.0; 10], 1), 0.1).expect_err("one label");
        assert!(err.to_string().contains("both labels"), "{err}");
        // Perfectly separable and unpenalised: the coefficients grow without bound.
        let y: Vec<f64> = (0..10).map(|i| f64::from(i >= 5)).collect();
        let err = fit(&Dataset::of(x.clone(), y.clone(), 1), 0.0).expect_err("separable");
        assert!(err.to_string().contains("raise alpha"), "{err}");
        // A penalty makes it a well-posed fit.
        let m = fit(&Dataset::of(x, y, 1), 0.01).expect("penalised");
        assert!(
            m.predict_row(&[2.0]) < 0.0 && m.predict_row(&[7.0]) > 0.0,
            "{m:?}"
        );
    }
}
