//! Synthetic, seeded traffic for one model version: inputs drawn around the manifest's
//! reference profile (its quantiles, or its categories by frequency; a standard normal for a
//! column without a reference), outputs that depend on the inputs and the version, and the
//! version's error rate and latency as the fault profile sets them.

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
}

/// How requests to one model version look and behave.
#[derive(Debug, Clone)]
pub struct Plan {
    version: u64,
    inputs: Vec<TensorPlan>,
    outputs: Vec<TensorPlan>,
    error_rate: f64,
    latency_us: f64,
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
    pub fn new(m: &ModelManifest, config: &SimConfig) -> Plan {
        let reference = m
            .reference_profile
            .as_deref()
            .and_then(|b| Profile::from_bytes(b).ok());
        let columns = model_columns(m);
        let inputs = m
            .inputs
            .iter()
            .enumerate()
            .map(|(t, spec)| {
                let shape = shape_of(&spec.shape);
                let n = shape.iter().product::<u64>().max(1) as usize;
                let draws = (0..n)
                    .map(|e| {
                        columns
                            .iter()
                            .find(|c| c.tensor == t && c.element == e)
                            .map_or(Draw::Normal, |c| {
                                Draw::from_reference(reference.as_ref(), &c.name)
                            })
                    })
                    .collect();
                TensorPlan {
                    name: spec.name.clone(),
                    shape,
                    datatype: spec.datatype,
                    draws,
                }
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
        }
    }

    /// One request: `Ok((inputs, outputs, latency µs))`, or `Err(())` for a failed one.
    #[allow(clippy::result_unit_err)]
    pub fn request(&self, rng: &mut Rng) -> Result<(Vec<Tensor>, Vec<Tensor>, f64), ()> {
        if rng.f64() < self.error_rate {
            return Err(());
        }
        let mut sum = 0.0;
        let mut count = 0usize;
        let inputs = self
            .inputs
            .iter()
            .map(|t| {
                let values: Vec<f64> = t.draws.iter().map(|d| d.sample(rng)).collect();
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
        let outputs = self
            .outputs
            .iter()
            .map(|t| {
                let n = t.shape.iter().product::<u64>().max(1) as usize;
                let values: Vec<f64> = (0..n)
                    .map(|j| {
                        let y = mean + 0.1 * self.version as f64 + 0.05 * j as f64;
                        y + 0.1 * rng.normal()
                    })
                    .collect();
                Tensor {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    data: data(t.datatype, &values),
                }
            })
            .collect();
        // Log-normal around the median latency.
        let latency = self.latency_us * (0.25 * rng.normal()).exp();
        Ok((inputs, outputs, latency))
    }
}
