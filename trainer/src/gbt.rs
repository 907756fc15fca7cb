//! Gradient-boosted trees, fitted by forust-ml (seeded, single-threaded, so the same data and
//! seed give the same trees) and read out into the form the ONNX `TreeEnsembleRegressor`
//! takes: squared error for a regression, log-loss for a binary classifier (the ensemble's
//! value is then the log-odds of label 1).

use forust_ml::GradientBooster;
use forust_ml::data::Matrix;
use forust_ml::objective::ObjectiveType;

use crate::dataset::Dataset;
use crate::error::{TrainError, TrainResult};
use crate::job::Params;

/// One node of a tree, as the exported model holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// Goes to `left` when `x[feature] < threshold`, else to `right`; a missing value goes
    /// left when `missing_left`.
    Branch {
        feature: usize,
        /// In f32, as the served model compares: the smallest f32 at or above the fitted
        /// split, so every f32 input goes the way it went in training.
        threshold: f32,
        left: usize,
        right: usize,
        missing_left: bool,
    },
    Leaf(f32),
}

/// A fitted ensemble: `base` plus one leaf weight per tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Ensemble {
    pub base: f32,
    pub trees: Vec<Vec<Node>>,
}

impl Ensemble {
    /// The prediction for `row`, walked as the served model walks it (f32 comparisons).
    pub fn predict_row(&self, row: &[f64]) -> f64 {
        let mut y = f64::from(self.base);
        for tree in &self.trees {
            let mut i = 0;
            loop {
                match &tree[i] {
                    Node::Leaf(w) => {
                        y += f64::from(*w);
                        break;
                    }
                    Node::Branch {
                        feature,
                        threshold,
                        left,
                        right,
                        missing_left,
                    } => {
                        let v = row[*feature] as f32;
                        i = if v.is_nan() {
                            if *missing_left { *left } else { *right }
                        } else if v < *threshold {
                            *left
                        } else {
                            *right
                        };
                    }
                }
            }
        }
        y
    }
}

/// The smallest f32 at or above `t`.
fn f32_at_or_above(t: f64) -> f32 {
    let f = t as f32;
    if f64::from(f) < t { f.next_up() } else { f }
}

/// Fits `p`'s trees on `d`: a binary classifier's (labels 0 and 1, log-loss) when
/// `classifier`, else a regression's.
pub fn fit(d: &Dataset, p: &Params, classifier: bool) -> TrainResult<Ensemble> {
    let (n, w) = (d.rows(), d.width());
    // forust reads column-major.
    let mut columns = vec![0.0; n * w];
    for i in 0..n {
        for j in 0..w {
            columns[j * n + i] = d.x[i * w + j];
        }
    }
    if columns.iter().any(|v| v.is_infinite()) {
        return Err(TrainError::Fit("a feature has an infinite value".into()));
    }
    let data = Matrix::new(&columns, n, w);
    let mut b = GradientBooster::default();
    if classifier {
        b.objective_type = ObjectiveType::LogLoss;
        // Start from the base rate's log-odds rather than forust's fixed 0.5.
        b.initialize_base_score = true;
    } else {
        b.objective_type = ObjectiveType::SquaredLoss;
    }
    b.iterations = p.iterations;
    b.learning_rate = p.learning_rate;
    b.max_depth = p.max_depth;
    b.seed = p.seed;
    // One thread: histogram sums in a fixed order, so the same bits every run.
    b.parallel = false;
    b.missing = f64::NAN;
    b.allow_missing_splits = true;
    // A missing value joins the left or right child (ONNX trees have two children).
    b.create_missing_branch = false;
    b.fit_unweighted(&data, &d.y, None)
        .map_err(|e| TrainError::Fit(e.to_string()))?;
    let trees = b
        .trees
        .iter()
        .map(|t| {
            t.nodes
                .iter()
                .map(|n| {
                    if n.is_leaf {
                        Node::Leaf(n.weight_value)
                    } else {
                        Node::Branch {
                            feature: n.split_feature,
                            threshold: f32_at_or_above(n.split_value),
                            left: n.left_child,
                            right: n.right_child,
                            missing_left: n.missing_node == n.left_child,
                        }
                    }
                })
                .collect()
        })
        .collect();
    Ok(Ensemble {
        base: b.base_score as f32,
        trees,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_keep_every_f32_on_its_side() {
        for t in [0.1f64, 1.0, -2.5, 1e-9, 3.000_000_1, -0.333_333_333_3] {
            let f = f32_at_or_above(t);
            assert!(f64::from(f) >= t);
            let below = f.next_down();
            assert!(f64::from(below) < t, "{t}: {f} is not the smallest");
        }
    }
}
