//! Ridge regression, closed form: the features standardised (missing values imputed with the
//! mean), then `(ZᵀZ/n + αI) β = Zᵀ(y − ȳ)/n` solved by Cholesky, then folded back to the raw
//! scale. A d×d solve of a symmetric positive definite matrix is a few lines; a linear-algebra
//! crate would add more than it saves. Summation order is fixed, so the result is the same
//! bits on every run.

use crate::dataset::Dataset;
use crate::error::{TrainError, TrainResult};

/// A fitted linear model on the raw feature scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    /// What a missing value of each feature is replaced with (its training mean).
    pub means: Vec<f64>,
    pub weights: Vec<f64>,
    pub bias: f64,
}

impl Linear {
    /// The model on raw features of the one fitted on standardised ones: `beta` the weights
    /// of the standardised features, `intercept` its value at the means (a constant
    /// feature's weight is 0).
    pub(crate) fn unstandardise(
        beta: &[f64],
        intercept: f64,
        means: Vec<f64>,
        stds: &[f64],
    ) -> Self {
        let mut weights = vec![0.0; stds.len()];
        let mut bias = intercept;
        for (j, (w, s)) in weights.iter_mut().zip(stds).enumerate() {
            if *s > 0.0 {
                *w = beta[j] / s;
                bias -= *w * means[j];
            }
        }
        Linear {
            means,
            weights,
            bias,
        }
    }

    pub fn predict_row(&self, row: &[f64]) -> f64 {
        let mut y = self.bias;
        for ((x, m), w) in row.iter().zip(&self.means).zip(&self.weights) {
            y += w * if x.is_nan() { *m } else { *x };
        }
        y
    }
}

/// Each feature's mean over the values present and its standard deviation with a missing value
/// counted as the mean (what imputation makes of it); an infinite value is an error.
pub(crate) fn moments(d: &Dataset) -> TrainResult<(Vec<f64>, Vec<f64>)> {
    let (n, w) = (d.rows(), d.width());
    let mut means = vec![0.0; w];
    let mut stds = vec![0.0; w];
    for j in 0..w {
        let (mut sum, mut count) = (0.0, 0u64);
        for i in 0..n {
            let v = d.x[i * w + j];
            if !v.is_nan() {
                if v.is_infinite() {
                    return Err(TrainError::Fit(format!(
                        "feature {:?} has an infinite value",
                        d.features[j]
                    )));
                }
                sum += v;
                count += 1;
            }
        }
        let mean = if count > 0 { sum / count as f64 } else { 0.0 };
        let mut var = 0.0;
        for i in 0..n {
            let v = d.x[i * w + j];
            let v = if v.is_nan() { mean } else { v };
            var += (v - mean) * (v - mean);
        }
        means[j] = mean;
        stds[j] = (var / n.max(1) as f64).sqrt();
    }
    Ok((means, stds))
}

/// Feature `j` of row `i` standardised with [`moments`]: a missing value reads as the mean
/// (0), a constant feature is 0.
pub(crate) fn standardised(d: &Dataset, means: &[f64], stds: &[f64], i: usize, j: usize) -> f64 {
    if stds[j] == 0.0 {
        return 0.0;
    }
    let v = d.x[i * d.width() + j];
    let v = if v.is_nan() { means[j] } else { v };
    (v - means[j]) / stds[j]
}

pub fn fit(d: &Dataset, alpha: f64) -> TrainResult<Linear> {
    let (n, w) = (d.rows(), d.width());
    if n == 0 {
        return Err(TrainError::Fit("no rows".into()));
    }
    let (means, stds) = moments(d)?;
    let y_mean = d.y.iter().sum::<f64>() / n as f64;
    // Normal equations on the standardised features; a constant feature gets weight 0.
    let z = |i: usize, j: usize| standardised(d, &means, &stds, i, j);
    let mut a = vec![0.0; w * w];
    let mut b = vec![0.0; w];
    let mut row = vec![0.0; w];
    for i in 0..n {
        for (j, r) in row.iter_mut().enumerate() {
            *r = z(i, j);
        }
        let t = d.y[i] - y_mean;
        for j in 0..w {
            b[j] += row[j] * t;
            for k in 0..=j {
                a[j * w + k] += row[j] * row[k];
            }
        }
    }
    for j in 0..w {
        for k in 0..=j {
            a[j * w + k] /= n as f64;
            a[k * w + j] = a[j * w + k];
        }
        // A constant feature's row is all zeros: 1 on its diagonal keeps the system solvable.
        a[j * w + j] += if stds[j] == 0.0 { 1.0 } else { alpha };
        b[j] /= n as f64;
    }
    let beta = solve_spd(&mut a, &b, w)
        .ok_or_else(|| TrainError::Fit("the features are collinear: raise alpha".into()))?;
    Ok(Linear::unstandardise(&beta, y_mean, means, &stds))
}

/// Solves `A x = b` for a symmetric positive definite `A` (row-major, n×n; overwritten with
/// its Cholesky factor). None if `A` is not positive definite.
pub(crate) fn solve_spd(a: &mut [f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d <= 1e-12 {
            return None;
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    // L y = b, then Lᵀ x = y.
    let mut y = vec![0.0; n];
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= a[i * n + k] * y[k];
        }
        y[i] = s / a[i * n + i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let mut s = y[i];
        for k in i + 1..n {
            s -= a[k * n + i] * x[k];
        }
        x[i] = s / a[i * n + i];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_an_exact_linear_relation_with_no_penalty() {
        // y = 3 + 2 a − 0.5 b, a constant column c.
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..50 {
            let (a, b) = (i as f64, ((i * 7) % 11) as f64);
            x.extend([a, b, 4.0]);
            y.push(3.0 + 2.0 * a - 0.5 * b);
        }
        let m = fit(&Dataset::of(x, y, 3), 0.0).expect("fit");
        assert!((m.weights[0] - 2.0).abs() < 1e-9, "{m:?}");
        assert!((m.weights[1] + 0.5).abs() < 1e-9, "{m:?}");
        assert_eq!(m.weights[2], 0.0);
        assert!((m.bias - 3.0).abs() < 1e-8, "{m:?}");
        // A missing value reads as the mean.
        assert!((m.predict_row(&[f64::NAN, 0.0, 4.0]) - (3.0 + 2.0 * 24.5)).abs() < 1e-8);
    }

    #[test]
    fn collinear_features_need_a_penalty() {
        let x: Vec<f64> = (0..20).flat_map(|i| [i as f64, 2.0 * i as f64]).collect();
        let y: Vec<f64> = (0..20).map(|i| i as f64).collect();
        assert!(matches!(
            fit(&Dataset::of(x.clone(), y.clone(), 2), 0.0),
            Err(TrainError::Fit(_))
        ));
        let m = fit(&Dataset::of(x, y, 2), 0.01).expect("fit");
        assert!((m.predict_row(&[10.0, 20.0]) - 10.0).abs() < 0.1, "{m:?}");
    }
}
