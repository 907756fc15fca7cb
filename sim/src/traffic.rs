//! Synthetic, seeded traffic for one model version: inputs drawn around a reference profile
//! (its quantiles, or its categories by frequency; a standard normal for a column without a
//! reference), outputs that depend on the inputs and the version, and the version's error rate
//! and latency as the fault profile sets them.
//!
//! The inputs come from the *world*, not from the version: each column is drawn from the
//! reference profile of the first version of the model the fleet served (where that version's
//! reference has the column; else from the served version's own), moved by the input shifts in
//! force (`--shift`, [`crate::Fleet::shift`]; numeric columns). A later version's own reference
//! decides only how well it predicts: with `--feedback`, a request's simulated truth moves away
//! from the prediction by `--error-per-iqr` for every interquartile range an input falls
//! outside that version's training range (its 1st–99th percentiles), plus `--truth-sd` of
//! noise. So a shift drifts the devices' sketches and raises their error, and a version trained
//! on the shifted world brings the error back down.

use std::collections::BTreeMap;

use edgefleet_common::quality::Task;
use edgefleet_common::sketch::{ColumnSketch, Profile, model_columns};
use edgefleet_common::{DataType, ModelManifest, Tensor, TensorData};

use crate::config::SimConfig;
use crate::rng::Rng;

/// Quantiles kept per numeric reference column (every percentile).
const QUANTILES: usize = 101;

/// How one input element is drawn.
#[derive(Debug, Clone)]
enum Draw {
    /// Inverse-CDF sampling between the reference's percentiles.
    Quantiles(Vec<f64>),
    /// Categories with cumulative weights.
    Categories(Vec<(i64, f64)>),
    Normal,
}

impl Draw {
    fn sample(&self, rng: &mut Rng) -> f64 {
        match self {
            Draw::Quantiles(q) => {
                let pos = rng.f64() * (q.len() - 1) as f64;
                let i = pos.floor() as usize;
                let (a, b) = (q[i], q[(i + 1).min(q.len() - 1)]);
                a + (b - a) * (pos - i as f64)
            }
            Draw::Categories(c) => {
                let total = c.last().map_or(0.0, |l| l.1);
                let u = rng.f64() * total;
                c.iter()
                    .find(|(_, w)| u < *w)
                    .or(c.last())
                    .map_or(0.0, |(v, _)| *v as f64)
            }
            Draw::Normal => rng.normal(),
        }
    }

    fn from_reference(profile: Option<&Profile>, name: &str) -> Draw {
        match profile.and_then(|p| p.column(name)).map(|c| &c.sketch) {
            Some(ColumnSketch::Numeric(s)) => {
                let view = s.view();
                let q: Option<Vec<f64>> = (0..QUANTILES)
                    .map(|i| view.quantile(i as f64 / (QUANTILES - 1) as f64))
                    .collect();
                match q {
                    Some(q) if q.iter().all(|x| x.is_finite()) => Draw::Quantiles(q),
                    _ => Draw::Normal,
                }
            }
            Some(ColumnSketch::Categorical(s)) => {
                let mut acc = 0.0;
                let c: Vec<(i64, f64)> = s
                    .frequencies()
                    .into_iter()
                    .map(|(v, n)| {
                        acc += n as f64;
                        (v, acc)
                    })
                    .collect();
                if c.is_empty() {
                    Draw::Normal
                } else {
                    Draw::Categories(c)
                }
            }
            None => Draw::Normal,
        }
    }
}

/// One tensor of a request: its name, shape (batch of one), datatype and how each element
/// is drawn (inputs) or computed (outputs).
#[derive(Debug, Clone)]
struct TensorPlan {
    name: String,
    shape: Vec<u64>,
    datatype: DataType,
    draws: Vec<Draw>,
    /// Each element's column name (what a shift names), where the manifest names one.
    columns: Vec<Option<String>>,
}

/// Where a version's training reference puts one input: its 1st and 99th percentiles, and the
/// unit its simulated error counts distance outside them in (the interquartile range).
#[derive(Debug, Clone, Copy)]
struct Range {
    lo: f64,
    hi: f64,
    unit: f64,
}

impl Range {
    fn of(profile: Option<&Profile>, name: &str) -> Option<Range> {
        let ColumnSketch::Numeric(s) = &profile?.column(name)?.sketch else {
            return None;
        };
        let view = s.view();
        let (lo, hi) = (view.quantile(0.01)?, view.quantile(0.99)?);
        let iqr = view.quantile(0.75)? - view.quantile(0.25)?;
        // A column that is mostly one value (a 0/1 flag) has no interquartile range.
        let unit = [iqr, hi - lo, 1.0]
            .into_iter()
            .find(|u| u.is_finite() && *u > 1e-9)?;
        (lo.is_finite() && hi.is_finite()).then_some(Range { lo, hi, unit })
    }

    /// How many units `x` lies outside the range.
    fn outside(&self, x: f64) -> f64 {
        (self.lo - x).max(x - self.hi).max(0.0) / self.unit
    }
}

/// Input shifts in force: column name → offset added to its values.
pub type Shifts = BTreeMap<String, f64>;

/// One simulated request that succeeded.
#[derive(Debug, Clone)]
pub struct Served {
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<Tensor>,
    pub latency_us: f64,
    /// With `--feedback`, for the requests whose truth comes back: the prediction and the
    /// truth, element by element of the first output (regression models only).
    pub feedback: Option<(Vec<f64>, Vec<f64>)>,
}

/// How requests to one model version look and behave.
#[derive(Debug, Clone)]
pub struct Plan {
    version: u64,
    inputs: Vec<TensorPlan>,
    outputs: Vec<TensorPlan>,
    error_rate: f64,
    latency_us: f64,
    /// Per input tensor and element: this version's training range, where it has one.
    ranges: Vec<Vec<Option<Range>>>,
    /// Whether requests get simulated truth back (`--feedback`, regression models).
    scored: bool,
    feedback: f64,
    truth_sd: f64,
    error_per_iqr: f64,
}

fn shape_of(spec: &[i64]) -> Vec<u64> {
    spec.iter()
        .map(|&d| if d < 1 { 1 } else { d as u64 })
        .collect()
}

fn data(datatype: DataType, values: &[f64]) -> TensorData {
    match datatype {
        DataType::Fp64 => TensorData::Fp64(values.to_vec()),
        DataType::Int64 => TensorData::Int64(values.iter().map(|v| v.round() as i64).collect()),
        DataType::Int32 => TensorData::Int32(values.iter().map(|v| v.round() as i32).collect()),
        DataType::Bool => TensorData::Bool(values.iter().map(|v| *v > 0.5).collect()),
        _ => TensorData::Fp32(values.iter().map(|v| *v as f32).collect()),
    }
}

impl Plan {
    /// The plan of `m`. `world`: the plan of the model's first version the fleet served; each
    /// input column it drew from a reference is drawn as it drew it (the world does not change
    /// with the version served), every other element from `m`'s own reference.
    pub fn new(m: &ModelManifest, world: Option<&Plan>, config: &SimConfig) -> Plan {
        let reference = m
            .reference_profile
            .as_deref()
            .and_then(|b| Profile::from_bytes(b).ok());
        let columns = model_columns(m);
        let column = |t: usize, e: usize| {
            columns
                .iter()
                .find(|c| c.tensor == t && c.element == e)
                .map(|c| c.name.clone())
        };
        let inputs: Vec<TensorPlan> = m
            .inputs
            .iter()
            .enumerate()
            .map(|(t, spec)| {
                let shape = shape_of(&spec.shape);
                let n = shape.iter().product::<u64>().max(1) as usize;
                let columns: Vec<Option<String>> = (0..n).map(|e| column(t, e)).collect();
                let draws = columns
                    .iter()
                    .map(|c| match c.as_deref() {
                        Some(c) => world
                            .and_then(|w| w.world_draw(c))
                            .cloned()
                            .unwrap_or_else(|| Draw::from_reference(reference.as_ref(), c)),
                        None => Draw::Normal,
                    })
                    .collect();
                TensorPlan {
                    name: spec.name.clone(),
                    shape,
                    datatype: spec.datatype,
                    draws,
                    columns,
                }
            })
            .collect();
        let ranges = inputs
            .iter()
            .map(|t| {
                t.columns
                    .iter()
                    .map(|c| c.as_deref().and_then(|c| Range::of(reference.as_ref(), c)))
                    .collect()
            })
            .collect();
        let outputs = m
            .outputs
            .iter()
            .map(|spec| TensorPlan {
                name: spec.name.clone(),
                shape: shape_of(&spec.shape),
                datatype: spec.datatype,
                draws: vec![],
                columns: vec![],
            })
            .collect();
        let error_rate = config.base_error_rate
            + match (config.error_version, config.error_rate) {
                (Some(v), Some(r)) if v == m.version => r,
                _ => 0.0,
            };
        let slow = match (config.slow_version, config.slow_factor) {
            (Some(v), Some(f)) if v == m.version => f,
            _ => 1.0,
        };
        Plan {
            version: m.version,
            inputs,
            outputs,
            error_rate: error_rate.min(1.0),
            latency_us: config.latency_ms * 1000.0 * slow,
            ranges,
            scored: config.feedback > 0.0 && Task::of(m) == Some(Task::Regression),
            feedback: config.feedback,
            truth_sd: config.truth_sd,
            error_per_iqr: config.error_per_iqr,
        }
    }

    /// How this plan draws `column`, if it draws it from a reference.
    fn world_draw(&self, column: &str) -> Option<&Draw> {
        self.inputs.iter().find_map(|t| {
            t.columns
                .iter()
                .zip(&t.draws)
                .find(|(c, d)| c.as_deref() == Some(column) && !matches!(d, Draw::Normal))
                .map(|(_, d)| d)
        })
    }

    /// One request under `shifts` (numeric columns only: a category moved by a fraction is no
    /// category), or `Err(())` for a failed one.
    #[allow(clippy::result_unit_err)]
    pub fn request(&self, rng: &mut Rng, shifts: &Shifts) -> Result<Served, ()> {
        if rng.f64() < self.error_rate {
            return Err(());
        }
        let mut sum = 0.0;
        let mut count = 0usize;
        // How far outside this version's training range the inputs fall, in units.
        let mut outside = 0.0;
        let inputs = self
            .inputs
            .iter()
            .zip(&self.ranges)
            .map(|(t, ranges)| {
                let values: Vec<f64> = t
                    .draws
                    .iter()
                    .zip(&t.columns)
                    .zip(ranges.iter().chain(std::iter::repeat(&None)))
                    .map(|((d, c), range)| {
                        let x = d.sample(rng);
                        let x = match c.as_ref().and_then(|c| shifts.get(c)) {
                            Some(s) if !matches!(d, Draw::Categories(_)) => x + s,
                            _ => x,
                        };
                        outside += range.map_or(0.0, |r| r.outside(x));
                        x
                    })
                    .collect();
                sum += values.iter().sum::<f64>();
                count += values.len();
                Tensor {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    data: data(t.datatype, &values),
                }
            })
            .collect();
        // The "model": the inputs' mean, shifted a little by the version, plus noise.
        let mean = sum / count.max(1) as f64;
        let mut predicted = Vec::new();
        let outputs = self
            .outputs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let n = t.shape.iter().product::<u64>().max(1) as usize;
                let values: Vec<f64> = (0..n)
                    .map(|j| {
                        let y = mean + 0.1 * self.version as f64 + 0.05 * j as f64;
                        y + 0.1 * rng.normal()
                    })
                    .collect();
                // The first output is what feedback scores, as on the agent.
                let data = data(t.datatype, &values);
                if self.scored && i == 0 {
                    predicted = data.to_f64();
                }
                Tensor {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    data,
                }
            })
            .collect();
        // Log-normal around the median latency.
        let latency_us = self.latency_us * (0.25 * rng.normal()).exp();
        // The world's truth: the model is off by how far it is outside what it learned.
        let feedback = (self.scored && rng.f64() < self.feedback).then(|| {
            let truth = predicted
                .iter()
                .map(|p| p - self.error_per_iqr * outside + self.truth_sd * rng.normal())
                .collect();
            (predicted, truth)
        });
        Ok(Served {
            inputs,
            outputs,
            latency_us,
            feedback,
        })
    }
}
