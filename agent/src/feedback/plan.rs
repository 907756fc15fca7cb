//! Which output of a model is scored, and what a prediction keeps of it.
//!
//! The scored output is the manifest's first. A floating-point one (FP16/FP32/FP64) makes the
//! model a regression: a prediction keeps that output's row values. Anything else (integers,
//! BOOL) makes it a classifier: a prediction keeps each row's label and, when the model serves
//! probabilities — the first other floating output whose rows have more than one element —
//! each row's probabilities. That output's `feature_names`, when the manifest gives them, name
//! the classes (see [`Classes`]).

use std::borrow::Cow;
use std::sync::Arc;

use edgefleet_common::sketch::{ModelColumn, model_columns};
use edgefleet_common::{DataType, ModelManifest, Tensor, TensorData, TensorSpec};
use serde::{Deserialize, Serialize};

/// Most numbers one prediction keeps (the scored output and the probabilities together): a
/// bigger prediction (an image-sized output, a huge batch) is not kept, and counted.
pub const MAX_KEPT_VALUES: usize = 65_536;
/// Longest request id kept (bytes): longer ids are not kept, and counted.
pub const MAX_ID_BYTES: usize = 256;

/// How one model version's predictions are scored.
#[derive(Debug)]
pub struct Plan {
    pub model: Arc<str>,
    pub version: u64,
    /// The scored output: the manifest's first.
    pub output: String,
    /// Whether the scored output's first dimension is the batch (else the whole tensor is one
    /// row), by the rule the window profiles use.
    batched: bool,
    pub kind: Kind,
    /// The input columns a captured sample holds (the window profiles' columns of the
    /// inputs), and their tensors' names.
    input_columns: Vec<ModelColumn>,
    input_tensors: Vec<String>,
    /// Column names of the inputs and of the scored output, as a sample batch names them.
    pub input_names: Vec<String>,
    pub output_names: Vec<String>,
}

#[derive(Debug)]
pub enum Kind {
    /// The scored output is floating point.
    Regression,
    /// The scored output is a label; `probs` is the output with the class probabilities.
    Classification { probs: Option<Probs> },
}

#[derive(Debug)]
pub struct Probs {
    pub output: String,
    batched: bool,
    /// The probability output's `feature_names`: the classes' names, in column order.
    pub classes: Vec<String>,
}

fn is_float(d: DataType) -> bool {
    matches!(d, DataType::Fp16 | DataType::Fp32 | DataType::Fp64)
}

/// Rank 0: one row; rank 1: batched when the dimension is -1; rank 2 and more: the first
/// dimension is the batch (as `sketch::model_columns` decides for window profiles).
fn batched(spec: &TensorSpec) -> bool {
    match spec.shape[..] {
        [] => false,
        [d] => d == -1,
        _ => true,
    }
}

/// Elements per row of `spec` as far as the manifest tells (None: a dynamic dimension).
fn static_width(spec: &TensorSpec) -> Option<u64> {
    let dims = if batched(spec) {
        spec.shape.get(1..)?
    } else {
        &spec.shape[..]
    };
    dims.iter().try_fold(1u64, |w, &d| {
        u64::try_from(d).ok().map(|d| w.saturating_mul(d))
    })
}

/// (rows, elements per row) of an output tensor.
fn rows_width(t: &Tensor, batched: bool) -> (usize, usize) {
    let len = t.data.len();
    match (batched, t.shape.first()) {
        (true, Some(&rows)) if rows > 0 => (rows as usize, len / rows as usize),
        (true, Some(_)) => (0, 0),
        _ => (1, len),
    }
}

impl Plan {
    pub fn for_manifest(m: &ModelManifest) -> Self {
        let first = m.outputs.first();
        let kind = match first {
            Some(s) if is_float(s.datatype) => Kind::Regression,
            _ => Kind::Classification {
                probs: m
                    .outputs
                    .iter()
                    .skip(1)
                    .find(|s| is_float(s.datatype) && static_width(s).is_none_or(|w| w > 1))
                    .map(|s| Probs {
                        output: s.name.clone(),
                        batched: batched(s),
                        classes: s.feature_names.clone(),
                    }),
            },
        };
        let columns = model_columns(m);
        let input_columns: Vec<ModelColumn> = columns
            .iter()
            .filter(|c| c.tensor < m.inputs.len())
            .cloned()
            .collect();
        let output_names = match (&kind, first) {
            (Kind::Regression, Some(_)) => columns
                .iter()
                .filter(|c| c.tensor == m.inputs.len())
                .map(|c| c.name.clone())
                .collect(),
            (_, Some(s)) => vec![s.name.clone()],
            (_, None) => vec![],
        };
        Plan {
            model: m.name.as_str().into(),
            version: m.version,
            output: first.map(|s| s.name.clone()).unwrap_or_default(),
            batched: first.is_some_and(batched),
            kind,
            input_names: input_columns.iter().map(|c| c.name.clone()).collect(),
            input_tensors: m.inputs.iter().map(|t| t.name.clone()).collect(),
            input_columns,
            output_names,
        }
    }

    /// The request's input values, `rows` rows of [`Plan::input_names`] each (row-major; NaN
    /// where a value is missing or not a number), for a captured sample. An unbatched input
    /// is the same for every row.
    pub fn input_rows(&self, inputs: &[Tensor], rows: u32) -> Vec<f64> {
        let found: Vec<Option<(&Tensor, usize)>> = self
            .input_tensors
            .iter()
            .map(|name| {
                inputs.iter().find(|t| &t.name == name).map(|t| {
                    let width = t
                        .shape
                        .get(1..)
                        .map_or(1, |d| d.iter().product::<u64>().max(1));
                    (t, width as usize)
                })
            })
            .collect();
        let mut out = Vec::with_capacity(rows as usize * self.input_columns.len());
        for r in 0..rows as usize {
            for c in &self.input_columns {
                let v = found
                    .get(c.tensor)
                    .copied()
                    .flatten()
                    .and_then(|(t, width)| {
                        let at = if c.batched {
                            r * width + c.element
                        } else {
                            c.element
                        };
                        t.data.get_f64(at)
                    });
                out.push(v.unwrap_or(f64::NAN));
            }
        }
        out
    }

    /// The class names of a classifier (none for a regression).
    pub fn classes(&self) -> &[String] {
        match &self.kind {
            Kind::Classification { probs: Some(p) } => &p.classes,
            _ => &[],
        }
    }

    /// What a prediction keeps of `outputs` (every output the model computed), borrowed from
    /// them (nothing is copied on the inference path), or why it keeps nothing.
    pub fn keep<'a>(&self, outputs: &'a [Tensor]) -> Result<(u32, KeptRef<'a>), &'static str> {
        let t = outputs
            .iter()
            .find(|t| t.name == self.output)
            .ok_or("the scored output is missing")?;
        let (rows, width) = rows_width(t, self.batched);
        if rows == 0 || width == 0 {
            return Err("the prediction has no rows");
        }
        let kept = match &self.kind {
            Kind::Regression => {
                if t.data.len() > MAX_KEPT_VALUES {
                    return Err("the prediction is too large to keep");
                }
                KeptRef::Values {
                    width: width as u32,
                    values: NumbersRef::of(&t.data)
                        .ok_or("the scored output is not floating point")?,
                }
            }
            Kind::Classification { probs } => {
                if width != 1 {
                    return Err("the scored output has more than one label per row");
                }
                if t.data.len() > MAX_KEPT_VALUES {
                    return Err("the prediction is too large to keep");
                }
                let labels = match &t.data {
                    TensorData::Int64(v) => LabelsRef::Int(Cow::Borrowed(v)),
                    TensorData::Int32(v) => {
                        LabelsRef::Int(Cow::Owned(v.iter().map(|&x| i64::from(x)).collect()))
                    }
                    TensorData::Bool(v) => LabelsRef::Bool(v),
                    _ => return Err("the scored output is not a label"),
                };
                let probs = probs.as_ref().and_then(|p| {
                    let t = outputs.iter().find(|t| t.name == p.output)?;
                    let (prows, c) = rows_width(t, p.batched);
                    let values = NumbersRef::of(&t.data)?;
                    (prows == rows && c > 1 && values.len() <= MAX_KEPT_VALUES)
                        .then_some((c as u32, values))
                });
                KeptRef::Labels { labels, probs }
            }
        };
        Ok((rows as u32, kept))
    }
}

/// [`Numbers`] borrowed from an output tensor; serialises byte for byte as [`Numbers`].
#[derive(Debug, Clone, Copy, Serialize)]
pub enum NumbersRef<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

impl<'a> NumbersRef<'a> {
    fn of(data: &'a TensorData) -> Option<Self> {
        match data {
            TensorData::Fp32(v) => Some(NumbersRef::F32(v)),
            TensorData::Fp64(v) => Some(NumbersRef::F64(v)),
            _ => None,
        }
    }

    fn len(&self) -> usize {
        match self {
            NumbersRef::F32(v) => v.len(),
            NumbersRef::F64(v) => v.len(),
        }
    }
}

/// [`Labels`] borrowed from an output tensor (INT32 labels widened, so copied);
/// serialises byte for byte as [`Labels`].
#[derive(Debug, Clone, Serialize)]
pub enum LabelsRef<'a> {
    Int(Cow<'a, [i64]>),
    Bool(&'a [bool]),
}

/// [`Kept`] borrowed from the outputs; serialises byte for byte as [`Kept`].
#[derive(Debug, Clone, Serialize)]
pub enum KeptRef<'a> {
    Values {
        width: u32,
        values: NumbersRef<'a>,
    },
    Labels {
        labels: LabelsRef<'a>,
        probs: Option<(u32, NumbersRef<'a>)>,
    },
}

/// A new [`Prediction`] borrowing what it keeps; serialises byte for byte as [`Prediction`],
/// so the queue holds it as bytes and the writer reads it back as a [`Prediction`].
#[derive(Debug, Clone, Serialize)]
pub struct PredictionRef<'a> {
    pub version: u64,
    pub at_ms: u64,
    pub rows: u32,
    /// No row has had feedback yet.
    pub done: &'a [u8],
    pub kept: KeptRef<'a>,
    pub inputs: &'a [f64],
}

/// Numbers as the model produced them (FP32 kept as f32: half the bytes, no precision lost).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Numbers {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Numbers {
    pub fn len(&self) -> usize {
        match self {
            Numbers::F32(v) => v.len(),
            Numbers::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> Option<f64> {
        match self {
            Numbers::F32(v) => v.get(i).map(|&x| f64::from(x)),
            Numbers::F64(v) => v.get(i).copied(),
        }
    }

    /// Elements `start..start + len` widened to f64 (fewer if out of range).
    pub fn row(&self, start: usize, len: usize) -> Vec<f64> {
        (start..start + len).filter_map(|i| self.get(i)).collect()
    }
}

/// A classifier's predicted labels, one per row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Labels {
    Int(Vec<i64>),
    Bool(Vec<bool>),
}

/// What a prediction keeps of the scored output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Kept {
    /// A regression: `width` values per row.
    Values { width: u32, values: Numbers },
    /// A classifier: a label per row, and `(C, probabilities)` with C per row when the model
    /// serves them.
    Labels {
        labels: Labels,
        probs: Option<(u32, Numbers)>,
    },
}

/// One prediction as the store holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub version: u64,
    /// When it was made, milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub rows: u32,
    /// Bit `r` set: row `r` received its feedback. Empty until the first one does.
    pub done: Vec<u8>,
    pub kept: Kept,
    /// The inputs, rows × the plan's input columns, when the model's samples were being
    /// captured as it was made; empty otherwise.
    pub inputs: Vec<f64>,
}

impl Prediction {
    pub fn is_done(&self, row: u32) -> bool {
        self.done
            .get(row as usize / 8)
            .is_some_and(|b| b & (1 << (row % 8)) != 0)
    }

    pub fn mark_done(&mut self, row: u32) {
        if self.done.is_empty() {
            self.done = vec![0; (self.rows as usize).div_ceil(8)];
        }
        if let Some(b) = self.done.get_mut(row as usize / 8) {
            *b |= 1 << (row % 8);
        }
    }

    pub fn all_done(&self) -> bool {
        (0..self.rows).all(|r| self.is_done(r))
    }
}

/// A classifier's class names and how labels map to them.
///
/// Labels are compared as text. When the probability output names its classes with names
/// that are not integers ("cat", "dog"), an integer label `k` (predicted or true) stands for
/// class `k` and reads as its name, and a true label may be given by name; a BOOL label reads
/// as class 0 (false) or 1 (true). When the names are integers ("3", "5", "7") they are the
/// labels themselves. The probability of the true class is the column of its name, else (no
/// names) the column the integer label numbers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Classes<'a> {
    pub names: &'a [String],
}

impl<'a> Classes<'a> {
    pub fn new(names: &'a [String]) -> Self {
        Self { names }
    }

    /// Names that are not all integers: they name the classes 0..C.
    pub fn symbolic(&self) -> bool {
        !self.names.is_empty() && self.names.iter().any(|n| n.parse::<i64>().is_err())
    }
}

/// A label in a classifier's domain.
#[derive(Debug, Clone, PartialEq)]
pub enum Label {
    Int(i64),
    Bool(bool),
}

impl Label {
    fn index(&self) -> i64 {
        match *self {
            Label::Int(k) => k,
            Label::Bool(b) => i64::from(b),
        }
    }

    /// The label as text, for the accuracy and the confusion matrix (see [`Classes`]).
    pub fn text(&self, classes: Classes<'_>) -> String {
        if classes.symbolic()
            && let Some(name) = usize::try_from(self.index())
                .ok()
                .and_then(|k| classes.names.get(k))
            && name.len() <= edgefleet_common::quality::MAX_LABEL_BYTES
        {
            return name.clone();
        }
        match *self {
            Label::Int(k) => k.to_string(),
            Label::Bool(b) => b.to_string(),
        }
    }

    /// The probability column of this label among `c` (see [`Classes`]).
    pub fn column(&self, classes: Classes<'_>, c: usize) -> Option<usize> {
        if !classes.names.is_empty() && !classes.symbolic() {
            let text = self.index().to_string();
            return classes.names.iter().position(|n| *n == text);
        }
        usize::try_from(self.index()).ok().filter(|&k| k < c)
    }
}

impl Labels {
    pub fn get(&self, row: usize) -> Option<Label> {
        match self {
            Labels::Int(v) => v.get(row).map(|&k| Label::Int(k)),
            Labels::Bool(v) => v.get(row).map(|&b| Label::Bool(b)),
        }
    }

    /// Reads a true label given in JSON in this classifier's domain; the error says what is
    /// accepted.
    pub fn truth(&self, v: &serde_json::Value, classes: Classes<'_>) -> Result<Label, String> {
        use serde_json::Value;
        let named = |s: &str| {
            classes
                .symbolic()
                .then(|| classes.names.iter().position(|n| n == s))
                .flatten()
                .map(|k| k as i64)
        };
        let integer = |v: &Value| -> Option<i64> {
            v.as_i64().or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            })
        };
        let wanted = || {
            let mut s = match self {
                Labels::Int(_) => "an integer label".to_owned(),
                Labels::Bool(_) => "a BOOL label (true or false, 1 or 0)".to_owned(),
            };
            if classes.symbolic() {
                s.push_str(&format!(" or a class name of {:?}", classes.names));
            } else if !classes.names.is_empty() {
                s.push_str(&format!(" among the classes {:?}", classes.names));
            }
            s
        };
        let label = match (self, v) {
            (Labels::Int(_), Value::Bool(b)) => Some(Label::Int(i64::from(*b))),
            (Labels::Int(_), Value::Number(_)) => integer(v).map(Label::Int),
            (Labels::Int(_), Value::String(s)) => s
                .trim()
                .parse::<i64>()
                .ok()
                .or_else(|| named(s))
                .map(Label::Int),
            (Labels::Bool(_), Value::Bool(b)) => Some(Label::Bool(*b)),
            (Labels::Bool(_), Value::Number(_)) => match integer(v) {
                Some(0) => Some(Label::Bool(false)),
                Some(1) => Some(Label::Bool(true)),
                _ => None,
            },
            (Labels::Bool(_), Value::String(s)) => match s.trim() {
                "true" | "1" => Some(Label::Bool(true)),
                "false" | "0" => Some(Label::Bool(false)),
                other => named(other).filter(|k| *k < 2).map(|k| Label::Bool(k == 1)),
            },
            _ => None,
        };
        let label = label.ok_or_else(|| {
            format!(
                "truth {} is not a label of this classifier: send {}",
                short(v),
                wanted()
            )
        })?;
        // Integer class names are the labels: a label that is none of them is a mistake.
        if !classes.names.is_empty()
            && !classes.symbolic()
            && label.column(classes, classes.names.len()).is_none()
        {
            return Err(format!(
                "truth {} is not one of the model's classes {:?}",
                short(v),
                classes.names
            ));
        }
        Ok(label)
    }
}

/// A JSON value for an error message, cut short.
pub fn short(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.len() <= 40 {
        return s;
    }
    let mut end = 40;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(name: &str, datatype: DataType, shape: &[i64], names: &[&str]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
            feature_names: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn manifest(outputs: Vec<TensorSpec>) -> ModelManifest {
        ModelManifest {
            name: "m".into(),
            version: 3,
            artifact: edgefleet_common::ArtifactRef {
                sha256: edgefleet_common::Digest::of(b""),
                size: 1,
                format: edgefleet_common::manifest::ModelFormat::Onnx,
            },
            inputs: vec![spec("x", DataType::Fp32, &[-1, 2], &[])],
            outputs,
            smoke_tests: vec![],
            created_at: 0,
            lineage: Default::default(),
            reference_profile: None,
            description: String::new(),
        }
    }

    #[test]
    fn the_first_output_decides_and_probabilities_are_the_first_wide_float() {
        let p = Plan::for_manifest(&manifest(vec![spec("y", DataType::Fp32, &[-1, 2], &[])]));
        assert!(matches!(p.kind, Kind::Regression));
        let p = Plan::for_manifest(&manifest(vec![
            spec("label", DataType::Int64, &[-1], &[]),
            spec("score", DataType::Fp32, &[-1, 1], &[]),
            spec("probs", DataType::Fp32, &[-1, 3], &["a", "b", "c"]),
        ]));
        let Kind::Classification { probs: Some(probs) } = &p.kind else {
            panic!("{p:?}")
        };
        assert_eq!(probs.output, "probs");
        assert_eq!(p.classes(), ["a", "b", "c"]);
        let outputs = vec![
            Tensor {
                name: "label".into(),
                shape: vec![2],
                data: TensorData::Int64(vec![2, 0]),
            },
            Tensor {
                name: "probs".into(),
                shape: vec![2, 3],
                data: TensorData::Fp32(vec![0.1, 0.2, 0.7, 0.8, 0.1, 0.1]),
            },
        ];
        let (rows, kept) = p.keep(&outputs).expect("kept");
        assert_eq!(rows, 2);
        // As the queue holds it.
        let kept: Kept =
            postcard::from_bytes(&postcard::to_allocvec(&kept).expect("encode")).expect("decode");
        let Kept::Labels {
            labels,
            probs: Some((3, probs)),
        } = kept
        else {
            panic!("{kept:?}")
        };
        assert_eq!(labels, Labels::Int(vec![2, 0]));
        assert_eq!(
            probs.row(3, 3),
            vec![0.8f32 as f64, 0.1f32 as f64, 0.1f32 as f64]
        );
    }

    #[test]
    fn labels_read_as_integers_bools_and_names() {
        let names: Vec<String> = ["no", "yes"].iter().map(|s| s.to_string()).collect();
        let c = Classes::new(&names);
        let ints = Labels::Int(vec![1]);
        assert_eq!(ints.truth(&json!("yes"), c), Ok(Label::Int(1)));
        assert_eq!(ints.truth(&json!(0), c), Ok(Label::Int(0)));
        assert_eq!(ints.truth(&json!(true), c), Ok(Label::Int(1)));
        assert_eq!(Label::Int(1).text(c), "yes");
        assert_eq!(Label::Int(1).column(c, 2), Some(1));
        assert!(ints.truth(&json!("maybe"), c).is_err());
        assert!(ints.truth(&json!(1.5), c).is_err());
        let numeric: Vec<String> = ["3", "5", "7"].iter().map(|s| s.to_string()).collect();
        let n = Classes::new(&numeric);
        assert_eq!(ints.truth(&json!("5"), n), Ok(Label::Int(5)));
        assert_eq!(Label::Int(5).column(n, 3), Some(1));
        assert_eq!(Label::Int(5).text(n), "5");
        let e = ints.truth(&json!(4), n).expect_err("not a class");
        assert!(e.contains("classes"), "{e}");
        let none = Classes::default();
        assert_eq!(Label::Int(2).column(none, 3), Some(2));
        assert_eq!(Label::Int(3).column(none, 3), None);
        let bools = Labels::Bool(vec![true]);
        assert_eq!(bools.truth(&json!(1), none), Ok(Label::Bool(true)));
        assert_eq!(bools.truth(&json!("false"), none), Ok(Label::Bool(false)));
        assert_eq!(Label::Bool(true).text(none), "true");
        assert!(bools.truth(&json!(2), none).is_err());
    }
}
