//! Test support that ships with the repo: small ONNX models built in code (no downloads),
//! with their expected outputs computed independently in plain Rust, and specs to sign them.
#![forbid(unsafe_code)]

pub mod demand;
pub mod fixtures;
pub mod onnx;

use edgefleet_common::{DataType, SmokeTest, Tensor, TensorData, TensorSpec};
use serde_json::json;

/// Number of input features of the demand MLP.
pub const FEATURES: usize = 8;
/// Hidden layer width.
pub const HIDDEN: usize = 16;

/// Feature names of the demand model (the motivating shop case).
pub const FEATURE_NAMES: [&str; FEATURES] = [
    "fuel_price",
    "temperature",
    "day_of_week",
    "hour",
    "promo",
    "holiday",
    "lag_1d",
    "lag_7d",
];

/// A two-layer perceptron `y = W2·relu(W1·x + b1) + b2` with deterministic weights.
#[derive(Debug, Clone)]
pub struct Mlp {
    pub w1: Vec<f32>, // [FEATURES, HIDDEN], row-major
    pub b1: Vec<f32>,
    pub w2: Vec<f32>, // [HIDDEN, 1]
    pub b2: f32,
}

/// A tiny deterministic generator (splitmix64) so weights need no RNG crate.
pub(crate) fn splitmix(state: &mut u64) -> f32 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

impl Mlp {
    pub fn new(seed: u64) -> Self {
        let mut s = seed;
        let mut v =
            |n: usize, scale: f32| (0..n).map(|_| splitmix(&mut s) * scale).collect::<Vec<_>>();
        let w1 = v(FEATURES * HIDDEN, 0.5);
        let b1 = v(HIDDEN, 0.1);
        let w2 = v(HIDDEN, 0.5);
        let b2 = v(1, 1.0)[0];
        Self { w1, b1, w2, b2 }
    }

    /// Reference forward pass in plain Rust (independent of tract).
    pub fn predict(&self, x: &[f32]) -> f32 {
        let mut y = self.b2;
        for h in 0..HIDDEN {
            let mut a = self.b1[h];
            for (f, xf) in x.iter().enumerate().take(FEATURES) {
                a += xf * self.w1[f * HIDDEN + h];
            }
            y += a.max(0.0) * self.w2[h];
        }
        y
    }

    pub fn to_onnx(&self) -> Vec<u8> {
        onnx::mlp(self, 0)
    }

    /// The same model with an unused initializer of `pad_floats` floats: a big artifact for
    /// download tests, serving the same numbers.
    pub fn to_onnx_padded(&self, pad_floats: usize) -> Vec<u8> {
        onnx::mlp(self, pad_floats)
    }
}

/// Deterministic probe rows.
pub fn probe_rows(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut s = seed ^ 0xABCD;
    (0..n)
        .map(|_| (0..FEATURES).map(|_| splitmix(&mut s) * 3.0).collect())
        .collect()
}

pub fn input_spec() -> TensorSpec {
    TensorSpec {
        name: "x".into(),
        datatype: DataType::Fp32,
        shape: vec![-1, FEATURES as i64],
        feature_names: FEATURE_NAMES.iter().map(|s| s.to_string()).collect(),
    }
}

pub fn output_spec() -> TensorSpec {
    TensorSpec {
        name: "y".into(),
        datatype: DataType::Fp32,
        shape: vec![-1, 1],
        feature_names: vec![],
    }
}

/// Smoke tests for the MLP: a batch of probe rows with reference outputs.
pub fn smoke_tests(mlp: &Mlp, rows: usize) -> Vec<SmokeTest> {
    let probes = probe_rows(rows, 7);
    vec![SmokeTest {
        inputs: vec![Tensor {
            name: "x".into(),
            shape: vec![rows as u64, FEATURES as u64],
            data: TensorData::Fp32(probes.iter().flatten().copied().collect()),
        }],
        expected: vec![Tensor {
            name: "y".into(),
            shape: vec![rows as u64, 1],
            data: TensorData::Fp32(probes.iter().map(|r| mlp.predict(r)).collect()),
        }],
        tolerance: 1e-4,
    }]
}

/// The JSON spec `edgefleet sign --spec` reads.
pub fn spec_json(
    name: &str,
    version: u64,
    mlp: &Mlp,
    broken_smoke_test: bool,
) -> serde_json::Value {
    let mut tests = smoke_tests(mlp, 4);
    if broken_smoke_test && let TensorData::Fp32(v) = &mut tests[0].expected[0].data {
        v[0] += 10.0;
    }
    json!({
        "name": name,
        "version": version,
        "description": format!("demand forecast MLP ({FEATURES} features), test model"),
        "inputs": [input_spec()],
        "outputs": [output_spec()],
        "smoke_tests": tests.iter().map(|t| json!({
            "inputs": t.inputs.iter().map(oip_json).collect::<Vec<_>>(),
            "expected": t.expected.iter().map(oip_json).collect::<Vec<_>>(),
            "tolerance": t.tolerance,
        })).collect::<Vec<_>>(),
        "lineage": {"code_revision": "testmodel", "params": {"seed": "see edgefleet-testmodel"}},
    })
}

/// A tensor in the form of an inference request's (and a spec's smoke tests):
/// `{"name", "shape", "datatype", "data": [flat, row-major]}`.
pub fn oip_json(t: &Tensor) -> serde_json::Value {
    let data = match &t.data {
        TensorData::Bool(v) => json!(v),
        TensorData::Int32(v) => json!(v),
        TensorData::Int64(v) => json!(v),
        TensorData::Fp32(v) => json!(v),
        TensorData::Fp64(v) => json!(v),
    };
    json!({"name": t.name, "shape": t.shape, "datatype": t.data.datatype().as_str(), "data": data})
}

/// A manifest for `artifact` with the given schema, no smoke tests and no reference profile:
/// what benchmarks load straight into `LoadedModel`, unsigned.
pub fn plain_manifest(
    name: &str,
    artifact: &[u8],
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
) -> edgefleet_common::ModelManifest {
    edgefleet_common::ModelManifest {
        name: name.into(),
        version: 1,
        artifact: edgefleet_common::ArtifactRef {
            sha256: edgefleet_common::Digest::of(artifact),
            size: artifact.len() as u64,
            format: edgefleet_common::manifest::ModelFormat::Onnx,
        },
        inputs,
        outputs,
        smoke_tests: vec![],
        created_at: 0,
        lineage: Default::default(),
        reference_profile: None,
        description: String::new(),
    }
}
