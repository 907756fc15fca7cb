//! Champion against challenger: the candidate a run made and the model it would replace,
//! scored on the same held-out rows (the newest captured, which the trainer never saw), by
//! the engine the devices serve them with. The candidate wins only by the policy's margin.

use std::path::Path;

use edgefleet_common::{DataType, ModelManifest, Tensor, TensorData};
use edgefleet_engine::LoadedModel;
use serde::{Deserialize, Serialize};

/// Rows per inference call while scoring.
const BATCH: usize = 1024;

/// The gate's judgement, kept with the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateVerdict {
    /// `mae`: mean absolute error on the held-out rows (a regression; lower is better);
    /// `accuracy`: the share of rows labelled right (a classifier; higher is better).
    pub metric: String,
    pub champion: f64,
    pub candidate: f64,
    /// Held-out rows scored (rows without a numeric truth are left out).
    pub rows: u64,
    /// The candidate must beat the champion by this share: candidate ≤ champion × (1 − margin).
    pub margin: f64,
    pub wins: bool,
}

impl GateVerdict {
    pub fn detail(&self) -> String {
        let (name, bound) = if self.metric == ACCURACY {
            ("accuracy".to_owned(), format!("≥ {:.4}", self.bound()))
        } else {
            (self.metric.to_uppercase(), format!("≤ {:.4}", self.bound()))
        };
        format!(
            "{name} on {} held-out rows: candidate {:.4}, champion {:.4} (the candidate must be {bound}){}",
            self.rows,
            self.candidate,
            self.champion,
            if self.wins {
                ""
            } else {
                ": the champion stays"
            }
        )
    }

    /// The error a score stands for: the MAE itself, a classifier's share of wrong labels.
    fn error(&self, score: f64) -> f64 {
        if self.metric == ACCURACY {
            1.0 - score
        } else {
            score
        }
    }

    /// What the candidate must reach: an error at most the champion's × (1 − margin), as a
    /// score (the error function is its own inverse).
    fn bound(&self) -> f64 {
        self.error(self.error(self.champion) * (1.0 - self.margin))
    }
}

const MAE: &str = "mae";
const ACCURACY: &str = "accuracy";

/// The held-out rows as the gate scores them: the model input's features in its order (NaN
/// where a value is missing), and the first true value.
#[derive(Debug, Default)]
pub(super) struct Rows {
    pub x: Vec<f32>,
    /// Empty when the rows were read without a target.
    pub y: Vec<f64>,
    pub width: usize,
    pub len: usize,
}

/// What the gate can score: one FP32 input `[batch, features]` and a first output, a
/// floating-point one (a regression) or labels (a classifier), the shapes the reference
/// trainer fits.
pub(super) fn signature(m: &ModelManifest) -> Result<(String, Vec<String>, String), String> {
    let no =
        |why: String| format!("the gate scores models with one FP32 input [-1, features]: {why}");
    let [input] = &m.inputs[..] else {
        return Err(no(format!("{} has {} inputs", m.name, m.inputs.len())));
    };
    match (input.datatype, &input.shape[..]) {
        (DataType::Fp32, [b, f])
            if *b < 0 && *f > 0 && input.feature_names.len() == *f as usize => {}
        _ => {
            return Err(no(format!(
                "input {:?} is {:?} {:?} with {} feature names",
                input.name,
                input.datatype,
                input.shape,
                input.feature_names.len()
            )));
        }
    }
    let output = m.outputs.first().ok_or_else(|| no("no output".into()))?;
    Ok((
        input.name.clone(),
        input.feature_names.clone(),
        output.name.clone(),
    ))
}

/// Reads a CSV of the hub's own export by column name: `features` in order and, given
/// `output`, the target `truth_<output>` (rows whose truth is not a number are left out).
pub(super) fn read_rows(
    csv: &[u8],
    features: &[String],
    output: Option<&str>,
) -> Result<Rows, String> {
    let mut r = csv::ReaderBuilder::new().has_headers(true).from_reader(csv);
    let header = r.headers().map_err(|e| e.to_string())?.clone();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| format!("the held-out rows have no column {name:?}"))
    };
    let cols: Vec<usize> = features.iter().map(|f| col(f)).collect::<Result<_, _>>()?;
    let target = output.map(|o| col(&format!("truth_{o}"))).transpose()?;
    let mut rows = Rows {
        width: cols.len(),
        ..Rows::default()
    };
    for record in r.records() {
        let record = record.map_err(|e| e.to_string())?;
        let cell = |c: usize| record.get(c).unwrap_or_default().trim();
        let y = match target {
            Some(t) => match cell(t).parse::<f64>().ok().filter(|v| v.is_finite()) {
                Some(y) => Some(y),
                None => continue,
            },
            None => None,
        };
        for &c in &cols {
            // An empty cell is a missing value; anything else unreadable is one too (the hub
            // wrote these rows from numbers).
            rows.x.push(cell(c).parse::<f32>().unwrap_or(f32::NAN));
        }
        rows.y.extend(y);
        rows.len += 1;
    }
    Ok(rows)
}

/// Scores `candidate` (a model file with the parent's tensors) against the parent on the
/// held-out CSV. Errors say why nothing could be judged.
pub fn judge(
    parent: &ModelManifest,
    parent_model: &Path,
    candidate: &ModelManifest,
    candidate_model: &Path,
    holdout_csv: &[u8],
    margin: f64,
) -> Result<GateVerdict, String> {
    let (input, features, output) = signature(parent)?;
    let rows = read_rows(holdout_csv, &features, Some(&output))?;
    let champion = LoadedModel::load(parent.clone(), parent_model)
        .map_err(|e| format!("the champion: {e}"))?;
    let challenger = LoadedModel::load(candidate.clone(), candidate_model)
        .map_err(|e| format!("the candidate does not load with the parent's tensors: {e}"))?;
    // The devices' rule (their feedback scores the model the same way).
    let classifier = edgefleet_common::quality::Task::of(parent)
        == Some(edgefleet_common::quality::Task::Classification);
    let score = |m: &LoadedModel| {
        if classifier {
            accuracy(m, &input, &output, &rows)
        } else {
            mae(m, &input, &output, &rows)
        }
    };
    let (c, n) = score(&champion)?;
    let (k, _) = score(&challenger).map_err(|e| format!("the candidate: {e}"))?;
    let mut verdict = GateVerdict {
        metric: if classifier { ACCURACY } else { MAE }.into(),
        champion: c,
        candidate: k,
        rows: n,
        margin,
        wins: false,
    };
    // Judged on the error either way: the candidate's at most the champion's × (1 − margin).
    verdict.wins = verdict.error(k) <= verdict.error(c) * (1.0 - margin);
    Ok(verdict)
}

/// The share of `rows` whose label (the first value of `output` in a row) is the true one,
/// and the rows scored.
fn accuracy(m: &LoadedModel, input: &str, output: &str, rows: &Rows) -> Result<(f64, u64), String> {
    if rows.len == 0 {
        return Err("no held-out row has a numeric label to score against".into());
    }
    let predicted = predict(m, input, output, rows)?;
    if predicted.len() != rows.len {
        return Err(format!("{} labels for {} rows", predicted.len(), rows.len));
    }
    let right = predicted
        .iter()
        .zip(&rows.y)
        .filter(|(p, y)| p == y)
        .count();
    Ok((right as f64 / rows.len as f64, rows.len as u64))
}

/// The model's values of `output` for every row of `rows`, row after row (a row's values
/// are as many as the output is wide), in batches of [`BATCH`].
pub(super) fn predict(
    m: &LoadedModel,
    input: &str,
    output: &str,
    rows: &Rows,
) -> Result<Vec<f64>, String> {
    let w = rows.width;
    let mut values = Vec::with_capacity(rows.len);
    for start in (0..rows.len).step_by(BATCH) {
        let end = (start + BATCH).min(rows.len);
        let t = Tensor {
            name: input.to_owned(),
            shape: vec![(end - start) as u64, w as u64],
            data: TensorData::Fp32(rows.x[start * w..end * w].to_vec()),
        };
        let out = m.infer(&[t], &[output.to_owned()])?;
        let predicted = out
            .iter()
            .find(|o| o.name == output)
            .ok_or_else(|| format!("no output {output:?}"))?
            .data
            .to_f64();
        if predicted.len() % (end - start) != 0 || predicted.is_empty() {
            return Err(format!(
                "{} values of {output:?} for {} rows",
                predicted.len(),
                end - start
            ));
        }
        values.extend(predicted);
    }
    Ok(values)
}

/// The model's mean absolute error on `rows` (one value of `output` per row), and the rows
/// scored.
fn mae(m: &LoadedModel, input: &str, output: &str, rows: &Rows) -> Result<(f64, u64), String> {
    let predicted = predict(m, input, output, rows)?;
    if predicted.len() != rows.len {
        return Err(format!(
            "{} predictions for {} rows",
            predicted.len(),
            rows.len
        ));
    }
    let (mut sum, mut n) = (0.0, 0u64);
    for (p, y) in predicted.iter().zip(&rows.y) {
        if !p.is_finite() {
            return Err(format!("a prediction of {p}"));
        }
        sum += (p - y).abs();
        n += 1;
    }
    if n == 0 {
        return Err("no held-out row has a numeric truth to score against".into());
    }
    Ok((sum / n as f64, n))
}

#[cfg(test)]
mod tests {
    use edgefleet_common::manifest::{ArtifactRef, ModelFormat};
    use edgefleet_common::{Digest, Lineage, TensorSpec};

    use super::*;

    /// A binary classifier of (price, temp) with labels `y` and probabilities `p` (the
    /// reference trainer's logistic regression on `rows`: price, temp, label).
    fn classifier(rows: &[(f64, f64, f64)]) -> Vec<u8> {
        crate::testkit::fit_price_temp(rows, true)
    }

    fn manifest(artifact: &[u8]) -> ModelManifest {
        let spec = |name: &str, datatype, shape: Vec<i64>, names: &[&str]| TensorSpec {
            name: name.into(),
            datatype,
            shape,
            feature_names: names.iter().map(|n| (*n).into()).collect(),
        };
        ModelManifest {
            name: "busy".into(),
            version: 1,
            artifact: ArtifactRef {
                sha256: Digest::of(artifact),
                size: artifact.len() as u64,
                format: ModelFormat::Onnx,
            },
            inputs: vec![spec("x", DataType::Fp32, vec![-1, 2], &["price", "temp"])],
            outputs: vec![
                spec("y", DataType::Int64, vec![-1], &[]),
                spec("p", DataType::Fp32, vec![-1, 2], &["0", "1"]),
            ],
            smoke_tests: vec![],
            created_at: 0,
            lineage: Lineage::default(),
            reference_profile: None,
            description: String::new(),
        }
    }

    /// A classifier is judged on its accuracy over the held-out labels: a model that learned
    /// "busy when it is warmer than the price" beats one that learned the opposite, and not
    /// the other way round.
    #[test]
    fn a_classifier_is_judged_on_accuracy() {
        let grid: Vec<(f64, f64)> = (0..20)
            .flat_map(|i| (0..20).map(move |j| (f64::from(i) * 0.5, f64::from(j) * 0.5 + 0.25)))
            .collect();
        let label = |(p, t): (f64, f64), warm: bool| (p, t, f64::from((t > p) == warm));
        let good = classifier(&grid.iter().map(|&r| label(r, true)).collect::<Vec<_>>());
        let wrong = classifier(&grid.iter().map(|&r| label(r, false)).collect::<Vec<_>>());
        let dir = tempfile::tempdir().expect("tmp");
        let (good_path, wrong_path) = (dir.path().join("good.onnx"), dir.path().join("wrong.onnx"));
        std::fs::write(&good_path, &good).expect("write");
        std::fs::write(&wrong_path, &wrong).expect("write");
        let mut csv = String::from("price,temp,truth_y\n");
        for i in 0..50 {
            let (p, t) = (f64::from(i % 7) + 0.3, f64::from(i % 11) * 0.7);
            csv += &format!("{p},{t},{}\n", u8::from(t > p));
        }
        let (good_m, wrong_m) = (manifest(&good), manifest(&wrong));
        let v = judge(
            &wrong_m,
            &wrong_path,
            &good_m,
            &good_path,
            csv.as_bytes(),
            0.02,
        )
        .expect("judged");
        assert_eq!(v.metric, "accuracy");
        assert_eq!(v.rows, 50);
        assert!(v.candidate > 0.9 && v.champion < 0.1, "{v:?}");
        assert!(v.wins, "{}", v.detail());
        assert!(
            v.detail().starts_with("accuracy on 50 held-out rows"),
            "{}",
            v.detail()
        );
        let back = judge(
            &good_m,
            &good_path,
            &wrong_m,
            &wrong_path,
            csv.as_bytes(),
            0.02,
        )
        .expect("judged");
        assert!(!back.wins, "{back:?}");
        assert!(
            back.detail().ends_with("the champion stays"),
            "{}",
            back.detail()
        );
        // The same model against itself wins with no margin and loses with one.
        let same = |margin| {
            judge(
                &good_m,
                &good_path,
                &good_m,
                &good_path,
                csv.as_bytes(),
                margin,
            )
            .expect("judged")
            .wins
        };
        assert!(same(0.0));
        assert!(!same(0.02) || (1.0 - v.candidate) == 0.0);
    }
}
