//! The training rows: the dataset CSV read through its Table Schema, its input columns put in
//! the model's feature order, its target chosen.

use serde::Deserialize;

use crate::error::{TrainResult, invalid};
use crate::job::{DATASET, SCHEMA, Signature};

/// Most rows read.
pub const MAX_ROWS: usize = 20_000_000;

#[derive(Debug, Deserialize)]
struct Schema {
    fields: Vec<Field>,
}

#[derive(Debug, Deserialize)]
struct Field {
    name: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    role: String,
}

/// Rows in the model's feature order.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Row-major, `rows × features`; NaN where a value is missing.
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    pub features: Vec<String>,
    pub target: String,
    /// Rows skipped because their target was missing or not a number.
    pub skipped: u64,
}

impl Dataset {
    /// Rows of `w` features named f0, f1, … with target `y` (tests).
    #[cfg(test)]
    pub(crate) fn of(x: Vec<f64>, y: Vec<f64>, w: usize) -> Dataset {
        Dataset {
            x,
            y,
            features: (0..w).map(|j| format!("f{j}")).collect(),
            target: "y".into(),
            skipped: 0,
        }
    }

    pub fn rows(&self) -> usize {
        self.y.len()
    }

    pub fn width(&self) -> usize {
        self.features.len()
    }

    pub fn row(&self, i: usize) -> &[f64] {
        let w = self.width();
        &self.x[i * w..(i + 1) * w]
    }

    /// Rows `range`, as their own dataset.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Dataset {
        let w = self.width();
        Dataset {
            x: self.x[range.start * w..range.end * w].to_vec(),
            y: self.y[range].to_vec(),
            features: self.features.clone(),
            target: self.target.clone(),
            skipped: 0,
        }
    }

    /// Reads `csv` through `schema` (the job's `dataset.csv` and `dataset.schema.json`) for a
    /// model of signature `sig`; `target` names the target column (default: the first truth
    /// column).
    pub fn read(
        csv: &[u8],
        schema: &[u8],
        sig: &Signature,
        target: Option<&str>,
    ) -> TrainResult<Dataset> {
        let schema: Schema =
            serde_json::from_slice(schema).map_err(|e| invalid(SCHEMA, e.to_string()))?;
        let inputs: Vec<&Field> = schema.fields.iter().filter(|f| f.role == "input").collect();
        let target =
            match target {
                Some(t) => schema.fields.iter().find(|f| f.name == t).ok_or_else(|| {
                    invalid(SCHEMA, format!("no column {t:?} (params.json target)"))
                })?,
                None => schema
                    .fields
                    .iter()
                    .find(|f| f.role == "truth")
                    .ok_or_else(|| {
                        invalid(
                            SCHEMA,
                            "no column has the role \"truth\": name the target in params.json",
                        )
                    })?,
            };
        if target.kind != "number" {
            return Err(invalid(
                SCHEMA,
                format!(
                    "the target {:?} is of type {:?}: the reference trainer fits numbers",
                    target.name, target.kind
                ),
            ));
        }
        // The model's feature order: its names when the parent gives them, else the schema's.
        let features: Vec<String> = if sig.feature_names.is_empty() {
            inputs.iter().map(|f| f.name.clone()).collect()
        } else {
            sig.feature_names.clone()
        };
        if features.len() != sig.features {
            return Err(invalid(
                SCHEMA,
                format!(
                    "{} input columns for a model input of {} features",
                    features.len(),
                    sig.features
                ),
            ));
        }
        let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(csv);
        let header = reader
            .headers()
            .map_err(|e| invalid(DATASET, e.to_string()))?
            .clone();
        let column = |name: &str| -> TrainResult<usize> {
            header.iter().position(|h| h == name).ok_or_else(|| {
                invalid(
                    DATASET,
                    format!(
                        "no column {name:?}; the header is {:?}",
                        header.iter().collect::<Vec<_>>()
                    ),
                )
            })
        };
        let feature_cols: Vec<usize> = features
            .iter()
            .map(|f| column(f))
            .collect::<TrainResult<_>>()?;
        let target_col = column(&target.name)?;
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let mut skipped = 0;
        for (line, record) in reader.records().enumerate() {
            let record = record.map_err(|e| invalid(DATASET, e.to_string()))?;
            if y.len() >= MAX_ROWS {
                return Err(invalid(DATASET, format!("more than {MAX_ROWS} rows")));
            }
            let cell = |c: usize| record.get(c).unwrap_or_default().trim();
            let t = cell(target_col);
            let Some(t) = t.parse::<f64>().ok().filter(|v| v.is_finite()) else {
                skipped += 1;
                continue;
            };
            for &c in &feature_cols {
                let v = cell(c);
                let v = if v.is_empty() {
                    f64::NAN
                } else {
                    v.parse::<f64>().map_err(|_| {
                        invalid(
                            DATASET,
                            format!(
                                "line {}: {:?} in column {:?} is not a number",
                                line + 2,
                                v,
                                header.get(c).unwrap_or_default()
                            ),
                        )
                    })?
                };
                x.push(v);
            }
            y.push(t);
        }
        if y.is_empty() {
            return Err(invalid(
                DATASET,
                format!("no row has a numeric target {:?}", target.name),
            ));
        }
        Ok(Dataset {
            x,
            y,
            features,
            target: target.name.clone(),
            skipped,
        })
    }
}
