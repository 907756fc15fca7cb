//! Mergeable data profiles: what a model saw, summarised small enough to send from a device
//! every window and to merge fleet-wide.
//!
//! A [`Profile`] has one sketch per column: [`NumericSketch`] (KLL quantiles + exact moments) or
//! [`CategoricalSketch`] (frequent items + HLL). [`LatencySketch`] (DDSketch) summarises
//! inference latency. Every sketch merges (the merge of two streams' sketches is, within the
//! documented error, the sketch of the concatenated stream) and serialises; the sketches'
//! own byte formats (Apache DataSketches, DataDog's DDSketch encoding) travel inside our
//! postcard encoding, behind a format byte: [`Profile::to_bytes`].
//!
//! Decoding is for untrusted bytes: sizes are bounded, every embedded sketch must decode and
//! agree with the exact counters next to it, and nothing decoded can panic later.

mod categorical;
mod latency;
mod numeric;

pub use categorical::CategoricalSketch;
pub use latency::{ALPHA as LATENCY_ALPHA, LatencySketch};
pub use numeric::{DEFAULT_K, NumericSketch, NumericView};

use serde::{Deserialize, Serialize};

/// The profile encoding's version: the first byte of [`Profile::to_bytes`].
pub const PROFILE_FORMAT: u8 = 1;
/// Largest encoded profile accepted.
pub const MAX_PROFILE_BYTES: usize = 8 * 1024 * 1024;
/// Most columns in a profile.
pub const MAX_COLUMNS: usize = 4096;
/// Largest count a decoded sketch may carry (2^53: exact in f64, and far from overflowing
/// when fleets of sketches are merged).
pub const MAX_COUNT: u64 = 1 << 53;
/// Longest column name.
pub const MAX_COLUMN_NAME: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SketchError {
    #[error("invalid sketch: {0}")]
    Invalid(String),
    #[error("profile: {0}")]
    Profile(String),
}

/// How a column is summarised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnKind {
    Numeric,
    Categorical,
}

/// A column of a profile schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    pub name: String,
    #[serde(default = "numeric")]
    pub kind: ColumnKind,
}

fn numeric() -> ColumnKind {
    ColumnKind::Numeric
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ColumnSketch {
    Numeric(NumericSketch),
    Categorical(CategoricalSketch),
}

impl ColumnSketch {
    pub fn kind(&self) -> ColumnKind {
        match self {
            ColumnSketch::Numeric(_) => ColumnKind::Numeric,
            ColumnSketch::Categorical(_) => ColumnKind::Categorical,
        }
    }

    fn update(&mut self, x: f64) {
        match self {
            ColumnSketch::Numeric(s) => s.update(x),
            ColumnSketch::Categorical(s) => s.update_f64(x),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub sketch: ColumnSketch,
}

/// One sketch per column, in schema order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    /// Rows profiled.
    pub rows: u64,
    pub columns: Vec<Column>,
}

impl Profile {
    /// An empty profile for `schema` (names unique, at most [`MAX_COLUMNS`]).
    pub fn new(schema: &[ColumnSpec], k: u16) -> Result<Self, SketchError> {
        check_names(schema.iter().map(|c| c.name.as_str()))?;
        let columns = schema
            .iter()
            .map(|c| {
                Ok(Column {
                    name: c.name.clone(),
                    sketch: match c.kind {
                        ColumnKind::Numeric => ColumnSketch::Numeric(NumericSketch::new(k)?),
                        ColumnKind::Categorical => {
                            ColumnSketch::Categorical(CategoricalSketch::default())
                        }
                    },
                })
            })
            .collect::<Result<_, SketchError>>()?;
        Ok(Profile { rows: 0, columns })
    }

    pub fn schema(&self) -> Vec<ColumnSpec> {
        self.columns
            .iter()
            .map(|c| ColumnSpec {
                name: c.name.clone(),
                kind: c.sketch.kind(),
            })
            .collect()
    }

    /// Adds one row: one value per column, in schema order (NaN: missing).
    pub fn update_row(&mut self, row: &[f64]) -> Result<(), SketchError> {
        if row.len() != self.columns.len() {
            return Err(SketchError::Profile(format!(
                "a row has {} values, the profile {} columns",
                row.len(),
                self.columns.len()
            )));
        }
        for (c, &x) in self.columns.iter_mut().zip(row) {
            c.sketch.update(x);
        }
        self.rows += 1;
        Ok(())
    }

    /// Adds one value to column `i` (rows are counted by the caller's [`Profile::add_rows`]).
    pub fn update_column(&mut self, i: usize, x: f64) {
        if let Some(c) = self.columns.get_mut(i) {
            c.sketch.update(x);
        }
    }

    pub fn add_rows(&mut self, n: u64) {
        self.rows += n;
    }

    /// Adds `other`, which must have the same columns (names and kinds, same order). All or
    /// nothing: on an error `self` is unchanged. Counts may not pass [`MAX_COUNT`] (merging
    /// fleets of windows stays far below it; reaching it means hostile input).
    pub fn merge(&mut self, other: &Profile) -> Result<(), SketchError> {
        self.check_merge(other)?;
        // In place, without a copy to fall back on: `check_merge` refused every case a column's
        // merge can fail on (a KLL merge fails only when its weight overflows, and every KLL
        // sketch we hold has the crate's one `m`), so no column is left half merged.
        self.merge_unchecked(other)
    }

    /// Whether [`merge`](Self::merge) would accept `other`, without changing anything: callers
    /// that merge one window into several aggregates check them all first.
    pub fn check_merge(&self, other: &Profile) -> Result<(), SketchError> {
        let same_columns = self.columns.len() == other.columns.len()
            && self
                .columns
                .iter()
                .zip(&other.columns)
                .all(|(a, b)| a.name == b.name && a.sketch.kind() == b.sketch.kind());
        if !same_columns {
            return Err(SketchError::Profile(
                "cannot merge profiles with different columns".into(),
            ));
        }
        let too_big = |a: u64, b: u64| a.checked_add(b).is_none_or(|s| s > MAX_COUNT);
        let overflow =
            too_big(self.rows, other.rows)
                || self.columns.iter().zip(&other.columns).any(|(a, b)| {
                    match (&a.sketch, &b.sketch) {
                        (ColumnSketch::Numeric(x), ColumnSketch::Numeric(y)) => {
                            too_big(x.count(), y.count()) || too_big(x.nonfinite(), y.nonfinite())
                        }
                        (ColumnSketch::Categorical(x), ColumnSketch::Categorical(y)) => {
                            too_big(x.count(), y.count()) || too_big(x.nulls(), y.nulls())
                        }
                        _ => true,
                    }
                });
        if overflow {
            return Err(SketchError::Profile(format!(
                "merged counts would pass {MAX_COUNT}"
            )));
        }
        Ok(())
    }

    fn merge_unchecked(&mut self, other: &Profile) -> Result<(), SketchError> {
        for (a, b) in self.columns.iter_mut().zip(&other.columns) {
            match (&mut a.sketch, &b.sketch) {
                (ColumnSketch::Numeric(x), ColumnSketch::Numeric(y)) => x.merge(y)?,
                (ColumnSketch::Categorical(x), ColumnSketch::Categorical(y)) => x.merge(y),
                _ => unreachable!("schemas compared equal"),
            }
        }
        self.rows = self.rows.saturating_add(other.rows);
        Ok(())
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// `PROFILE_FORMAT` then the postcard encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![PROFILE_FORMAT];
        // Encoding to a Vec cannot fail for these types.
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    /// Decodes untrusted bytes (bounded, versioned, every sketch validated).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SketchError> {
        if bytes.len() > MAX_PROFILE_BYTES {
            return Err(SketchError::Profile(format!(
                "{} bytes, more than the {MAX_PROFILE_BYTES} allowed",
                bytes.len()
            )));
        }
        match bytes.split_first() {
            Some((&PROFILE_FORMAT, body)) => {
                let p: Profile = postcard::from_bytes(body)
                    .map_err(|e| SketchError::Profile(format!("malformed: {e}")))?;
                check_names(p.columns.iter().map(|c| c.name.as_str()))?;
                if p.rows > MAX_COUNT {
                    return Err(SketchError::Profile("row count out of range".into()));
                }
                Ok(p)
            }
            Some((v, _)) => Err(SketchError::Profile(format!(
                "format {v} is not known (this build reads {PROFILE_FORMAT})"
            ))),
            None => Err(SketchError::Profile("empty".into())),
        }
    }
}

/// Widest tensor profiled column by column (wider ones, images, are not profiled).
pub const MAX_PROFILED_WIDTH: usize = 256;

/// One column a device profiles for a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelColumn {
    pub name: String,
    /// Index into the manifest's inputs, then its outputs.
    pub tensor: usize,
    /// Element within one row of that tensor.
    pub element: usize,
    /// Whether the tensor's first dimension is the batch (one row per entry), or the whole
    /// tensor is one row.
    pub batched: bool,
}

/// The columns profiled for a model, by one rule everywhere (the agent's windows, the checks
/// of `sign --reference`, the hub's drift): tensors of rank ≤ 2 at most
/// [`MAX_PROFILED_WIDTH`] wide; a column is named by the tensor's feature name, by the tensor
/// name when a row has one value, else `name[i]`. The first column of a name wins.
pub fn model_columns(m: &crate::ModelManifest) -> Vec<ModelColumn> {
    let mut out: Vec<ModelColumn> = Vec::new();
    for (t, spec) in m.inputs.iter().chain(&m.outputs).enumerate() {
        let (batched, width) = match spec.shape[..] {
            [] => (false, 1),
            [-1] => (true, 1),
            [c] => (false, c),
            [_, c] => (true, c),
            _ => continue,
        };
        let Ok(width) = usize::try_from(width) else {
            continue;
        };
        if !(1..=MAX_PROFILED_WIDTH).contains(&width) {
            continue;
        }
        for e in 0..width {
            let name = match spec.feature_names.get(e) {
                Some(f) => f.clone(),
                None if width == 1 => spec.name.clone(),
                None => format!("{}[{e}]", spec.name),
            };
            if out.iter().any(|c| c.name == name) {
                continue;
            }
            out.push(ModelColumn {
                name,
                tensor: t,
                element: e,
                batched,
            });
        }
    }
    out
}

fn check_names<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), SketchError> {
    let mut seen = std::collections::BTreeSet::new();
    for n in names {
        if n.is_empty() || n.len() > MAX_COLUMN_NAME || n.chars().any(char::is_control) {
            return Err(SketchError::Profile(format!(
                "bad column name {n:?} (1 to {MAX_COLUMN_NAME} printable characters)"
            )));
        }
        if !seen.insert(n) {
            return Err(SketchError::Profile(format!("column {n:?} appears twice")));
        }
        if seen.len() > MAX_COLUMNS {
            return Err(SketchError::Profile(format!(
                "more than {MAX_COLUMNS} columns"
            )));
        }
    }
    Ok(())
}
