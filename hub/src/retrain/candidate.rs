//! What a candidate that won its gate becomes: the manifest of the model's next version. It
//! keeps the parent's tensors (the gate loaded the candidate with them), and adds what the
//! devices need to check and watch it:
//! - a reference profile of its training rows (the inputs as the trainer saw them, the
//!   outputs as the candidate predicts them), in the sketches the devices profile with, so
//!   drift is measured against exactly what this version learned from;
//! - smoke tests: the first held-out rows with the candidate's own outputs, so a device that
//!   computes anything else refuses the version;
//! - its lineage: parent, training data digest, trainer, params, metrics, the run.

use std::path::Path;

use edgefleet_common::sketch::{ColumnKind, ColumnSpec, DEFAULT_K, Profile, model_columns};
use edgefleet_common::{Lineage, ModelManifest, SmokeTest, Tensor, TensorData};
use edgefleet_engine::LoadedModel;

use super::gate::{Rows, predict, read_rows, signature};

/// Held-out rows made into the version's smoke test.
pub const SMOKE_ROWS: usize = 8;

/// What the new version's manifest is made from.
pub struct Draft<'a> {
    pub parent: &'a ModelManifest,
    /// The parent's reference profile: its column kinds (numeric or categorical) carry over.
    pub parent_reference: Option<&'a Profile>,
    pub candidate: &'a Path,
    pub candidate_sha256: edgefleet_common::Digest,
    pub candidate_size: u64,
    pub version: u64,
    pub created_at: u64,
    pub lineage: Lineage,
    pub description: String,
    /// The rows the trainer trained on, and those it never saw (the hub's CSV export).
    pub train_csv: &'a [u8],
    pub holdout_csv: &'a [u8],
}

/// The next version's manifest, checked: it validates, and the candidate passes its own smoke
/// tests with the engine the devices run.
pub fn manifest(d: Draft<'_>) -> Result<ModelManifest, String> {
    let mut m = d.parent.clone();
    m.version = d.version;
    m.artifact.sha256 = d.candidate_sha256;
    m.artifact.size = d.candidate_size;
    m.created_at = d.created_at;
    m.lineage = d.lineage;
    m.description = d.description;
    m.smoke_tests = Vec::new();
    m.reference_profile = None;
    let (input, features, _) = signature(&m)?;
    let model = LoadedModel::load(m.clone(), d.candidate).map_err(|e| e.to_string())?;
    let outputs: Vec<String> = m.outputs.iter().map(|o| o.name.clone()).collect();

    let train = read_rows(d.train_csv, &features, None)?;
    let profile = reference(&m, d.parent_reference, &model, &input, &train)?;
    m.reference_profile = Some(profile.to_bytes());

    let held = read_rows(d.holdout_csv, &features, None)?;
    let n = held.len.min(SMOKE_ROWS);
    if n == 0 {
        return Err("no held-out row to make a smoke test of".into());
    }
    let x = Tensor {
        name: input.clone(),
        shape: vec![n as u64, held.width as u64],
        data: TensorData::Fp32(held.x[..n * held.width].to_vec()),
    };
    let expected = model.infer(std::slice::from_ref(&x), &outputs)?;
    // The same engine on another CPU may differ in the last bits of a sum; anything more is
    // a different model.
    let largest = expected
        .iter()
        .flat_map(|t| t.data.to_f64())
        .filter(|v| v.is_finite())
        .fold(1.0f64, |a, v| a.max(v.abs()));
    m.smoke_tests = vec![SmokeTest {
        inputs: vec![x],
        expected,
        tolerance: 1e-4 * largest,
    }];
    m.validate().map_err(|e| e.to_string())?;
    LoadedModel::load(m.clone(), d.candidate)
        .and_then(|l| l.smoke_test())
        .map_err(|e| format!("the new version fails its own smoke test: {e}"))?;
    Ok(m)
}

/// The training rows profiled as a device profiles this version: every input column, and
/// each batched output column with the candidate's predictions.
fn reference(
    m: &ModelManifest,
    parent: Option<&Profile>,
    model: &LoadedModel,
    input: &str,
    rows: &Rows,
) -> Result<Profile, String> {
    if rows.len == 0 {
        return Err("no training row to profile".into());
    }
    let n_in = m.inputs.len();
    let columns: Vec<_> = model_columns(m)
        .into_iter()
        .filter(|c| c.tensor < n_in || c.batched)
        .collect();
    let schema: Vec<ColumnSpec> = columns
        .iter()
        .map(|c| ColumnSpec {
            name: c.name.clone(),
            kind: parent
                .and_then(|p| p.column(&c.name))
                .map_or(ColumnKind::Numeric, |col| col.sketch.kind()),
        })
        .collect();
    let mut predicted = Vec::new();
    for spec in &m.outputs {
        let values = predict(model, input, &spec.name, rows)?;
        let width = values.len() / rows.len;
        predicted.push((values, width));
    }
    let mut profile = Profile::new(&schema, DEFAULT_K).map_err(|e| e.to_string())?;
    let mut row = vec![0f64; columns.len()];
    for r in 0..rows.len {
        for (slot, c) in row.iter_mut().zip(&columns) {
            *slot = if c.tensor < n_in {
                f64::from(rows.x[r * rows.width + c.element])
            } else {
                let (values, width) = &predicted[c.tensor - n_in];
                values
                    .get(r * width + c.element)
                    .copied()
                    .unwrap_or(f64::NAN)
            };
        }
        profile.update_row(&row).map_err(|e| e.to_string())?;
    }
    Ok(profile)
}
