//! Reference profiles: the training data summarised with the same sketches the devices use, so
//! the hub and the devices compare what they see with exactly what the model was trained on.

use std::path::Path;

use anyhow::{Context, bail};
use edgefleet_common::sketch::{ColumnKind, ColumnSpec, Profile};

/// Largest CSV read (training sets bigger than this should be sampled first).
pub const MAX_CSV_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Profiles a CSV file with a header row. `schema` (JSON: `[{"name": …, "kind": "numeric" |
/// "categorical"}]`) picks and types the columns; without it every column is numeric. Empty
/// cells and `NaN` count as missing; any other unparsable cell is an error naming the line.
pub fn profile_csv(data: &Path, schema: Option<&Path>, k: u16) -> anyhow::Result<Profile> {
    crate::keyfile::check_size(data, MAX_CSV_BYTES).context("sample the data first")?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_path(data)
        .with_context(|| format!("cannot open {}", data.display()))?;
    let header: Vec<String> = reader
        .headers()
        .with_context(|| format!("{}: no header row", data.display()))?
        .iter()
        .map(str::to_owned)
        .collect();
    let schema: Vec<ColumnSpec> = match schema {
        Some(path) => {
            let text = crate::keyfile::read_bounded(path)?;
            serde_json::from_slice(&text).with_context(|| {
                format!(
                    "schema {}: expected [{{\"name\": …, \"kind\": \"numeric\" | \"categorical\"}}]",
                    path.display()
                )
            })?
        }
        None => header
            .iter()
            .map(|h| ColumnSpec {
                name: h.clone(),
                kind: ColumnKind::Numeric,
            })
            .collect(),
    };
    let positions: Vec<usize> = schema
        .iter()
        .map(|c| {
            header.iter().position(|h| h == &c.name).with_context(|| {
                format!(
                    "column {:?} of the schema is not in {} (its columns: {header:?})",
                    c.name,
                    data.display()
                )
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut profile = Profile::new(&schema, k)?;
    let mut row = vec![0f64; schema.len()];
    for (line, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: line {}", data.display(), line + 2))?;
        for (slot, &pos) in row.iter_mut().zip(&positions) {
            let cell = record.get(pos).unwrap_or("");
            *slot = if cell.is_empty() || cell.eq_ignore_ascii_case("nan") {
                f64::NAN
            } else {
                cell.parse().with_context(|| {
                    format!(
                        "{}: line {}, column {:?}: {cell:?} is not a number",
                        data.display(),
                        line + 2,
                        header[pos]
                    )
                })?
            };
        }
        profile.update_row(&row)?;
    }
    if profile.rows == 0 {
        bail!("{} has a header but no rows", data.display());
    }
    Ok(profile)
}

/// One line per column, for people.
pub fn describe(profile: &Profile) -> String {
    use edgefleet_common::sketch::ColumnSketch;
    let mut out = format!("{} rows\n", profile.rows);
    for c in &profile.columns {
        let line = match &c.sketch {
            ColumnSketch::Numeric(s) => format!(
                "{:<24} numeric      n={} missing={} mean={:.4} std={:.4} p05={:.4} p50={:.4} p95={:.4}",
                c.name,
                s.count(),
                s.nonfinite(),
                s.mean().unwrap_or(f64::NAN),
                s.std().unwrap_or(f64::NAN),
                s.quantile(0.05).unwrap_or(f64::NAN),
                s.quantile(0.5).unwrap_or(f64::NAN),
                s.quantile(0.95).unwrap_or(f64::NAN),
            ),
            ColumnSketch::Categorical(s) => format!(
                "{:<24} categorical  n={} missing={} distinct≈{:.0} top={:?}",
                c.name,
                s.count(),
                s.nulls(),
                s.distinct(),
                s.frequencies().into_iter().take(5).collect::<Vec<_>>()
            ),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}
