//! Training samples: rows of (inputs, prediction, truth) a device captures from matched ground
//! truth when, and only when, the hub tells it to.
//!
//! - [`CaptureInstruction`]: "device D: capture samples of model M, at rate R, at most N rows a
//!   window". Signed by the hub like a window instruction (the hub key under the root's
//!   delegation, serial from the same counter, an expiry), delivered in the assignment bundle
//!   (format 3). No instruction, an expired one, or one for another device: no capture. Sample
//!   capture never switches on by itself.
//! - [`SampleBatch`]: one window's reservoir sample of one model version, signed by the device,
//!   queued in the same outbox as telemetry (its own sequence number from the same counter),
//!   published on [`crate::telemetry::topic::samples`], acked like a telemetry record.

use serde::{Deserialize, Serialize};

use crate::encoding::Document;
use crate::error::{Error, Result};
use crate::name;
use crate::quality::MAX_LABEL_BYTES;
use crate::sketch::MAX_COLUMN_NAME;

/// Most rows one window's sample of one model may hold.
pub const MAX_ROWS_PER_WINDOW: u32 = 10_000;
/// Most values in one row (inputs, predicted, truth together).
pub const MAX_ROW_VALUES: usize = 1024;

/// "Device `device`: capture training samples of `model`."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureInstruction {
    pub device: String,
    pub model: String,
    /// The share of matched feedback rows offered to the window's reservoir, in parts per
    /// million, 1..=1,000,000 (an integer: signed documents compare and encode exactly).
    pub rate_ppm: u32,
    /// The reservoir's size: rows kept per window, 1..=[`MAX_ROWS_PER_WINDOW`].
    pub max_rows: u32,
    pub serial: u64,
    pub issued_at: u64,
    pub expires_at: u64,
}

impl Document for CaptureInstruction {
    const KIND: &'static str = "capture-instruction";
    const WHAT: &'static str = "sample capture instruction";
}

/// The hub signs it under the root's delegation for assignments, and only for models the
/// delegation's patterns cover: [`crate::Signed::verify`] checks both.
impl crate::trust::Scoped for CaptureInstruction {
    const PERMISSION: crate::Permission = crate::Permission::Assignments;
    fn scope(&self) -> &str {
        &self.model
    }
}

impl CaptureInstruction {
    /// Checks what a device must check beyond the signature: for it, fresh, in range.
    pub fn validate_for(&self, device: &str, now: u64) -> Result<()> {
        let bad = |why: String| Err(Error::Instruction(why));
        if self.device != device {
            return bad(format!("it is for device {}, not {device}", self.device));
        }
        if now >= self.expires_at {
            return bad(format!("it expired at {} (now {now})", self.expires_at));
        }
        name::validate(&self.model)?;
        check_policy(self.rate_ppm, self.max_rows).map_err(Error::Instruction)
    }

    /// The capture rate as a fraction.
    pub fn rate(&self) -> f64 {
        f64::from(self.rate_ppm) / 1e6
    }
}

/// Whether a capture rate (parts per million) and reservoir size make sense; the reason when
/// not.
pub fn check_policy(rate_ppm: u32, max_rows: u32) -> std::result::Result<(), String> {
    if !(1..=1_000_000).contains(&rate_ppm) {
        return Err(format!(
            "rate {rate_ppm} ppm must be 1..=1000000 (a share of the matched rows)"
        ));
    }
    if !(1..=MAX_ROWS_PER_WINDOW).contains(&max_rows) {
        return Err(format!(
            "max_rows {max_rows} must be 1..={MAX_ROWS_PER_WINDOW}"
        ));
    }
    Ok(())
}

/// A predicted or true value: a number (regression, or a numeric class) or a text label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Number(f64),
    Label(String),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Number(x) => write!(f, "{x}"),
            Value::Label(l) => f.write_str(l),
        }
    }
}

/// One captured row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRow {
    /// When the prediction was made (device clock, seconds).
    pub made_at: u64,
    /// One value per input column (NaN where a feature was not numeric).
    pub inputs: Vec<f64>,
    pub predicted: Vec<Value>,
    pub truth: Vec<Value>,
}

/// One window's sample of one model version from one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleBatch {
    pub device_id: String,
    /// From the device's outbox counter, shared with telemetry records: never reused.
    pub seq: u64,
    pub model: String,
    pub version: u64,
    pub window_start: u64,
    pub window_end: u64,
    /// Matched feedback rows offered to the reservoir (≥ the rows kept): the sampling ratio.
    pub offered: u64,
    /// Column names: the inputs' features, then the scored output's elements.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub rows: Vec<SampleRow>,
}

impl Document for SampleBatch {
    const KIND: &'static str = "samples";
    const WHAT: &'static str = "sample batch";
}

fn invalid(detail: impl Into<String>) -> Error {
    Error::Malformed {
        what: "sample batch",
        detail: detail.into(),
    }
}

impl SampleBatch {
    /// Checks every field of a batch received from outside.
    pub fn validate(&self) -> Result<()> {
        name::validate(&self.device_id)?;
        name::validate(&self.model)?;
        if self.seq == 0 {
            return Err(invalid("sequence numbers start at 1"));
        }
        if self.window_end < self.window_start {
            return Err(invalid("the window ends before it starts"));
        }
        if self.rows.len() > MAX_ROWS_PER_WINDOW as usize {
            return Err(invalid(format!(
                "{} rows, over the limit of {MAX_ROWS_PER_WINDOW}",
                self.rows.len()
            )));
        }
        if self.offered < self.rows.len() as u64 {
            return Err(invalid("fewer rows offered than kept"));
        }
        if self.inputs.len() + 2 * self.outputs.len() > MAX_ROW_VALUES || self.outputs.is_empty() {
            return Err(invalid(format!(
                "{} input and {} output columns: at least one output, at most {MAX_ROW_VALUES} values a row",
                self.inputs.len(),
                self.outputs.len()
            )));
        }
        for c in self.inputs.iter().chain(&self.outputs) {
            if c.is_empty() || c.len() > MAX_COLUMN_NAME || c.chars().any(char::is_control) {
                return Err(invalid(format!("column name {c:?}")));
            }
        }
        for (i, r) in self.rows.iter().enumerate() {
            let widths_ok = r.inputs.len() == self.inputs.len()
                && r.predicted.len() == self.outputs.len()
                && r.truth.len() == self.outputs.len();
            if !widths_ok {
                return Err(invalid(format!(
                    "row {i} does not have the columns' widths"
                )));
            }
            for v in r.predicted.iter().chain(&r.truth) {
                match v {
                    Value::Number(x) if !x.is_finite() => {
                        return Err(invalid(format!("row {i}: a non-finite value")));
                    }
                    Value::Label(l) if l.len() > MAX_LABEL_BYTES => {
                        return Err(invalid(format!(
                            "row {i}: a label over {MAX_LABEL_BYTES} bytes"
                        )));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The CSV header of exported rows: device, version, made_at, the inputs, then
    /// `predicted_{o}` and `truth_{o}` per output.
    pub fn csv_header(&self) -> Vec<String> {
        let mut h = vec!["device".into(), "version".into(), "made_at".into()];
        h.extend(self.inputs.iter().cloned());
        h.extend(self.outputs.iter().map(|o| format!("predicted_{o}")));
        h.extend(self.outputs.iter().map(|o| format!("truth_{o}")));
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn batch() -> SampleBatch {
        SampleBatch {
            device_id: "shop-1".into(),
            seq: 3,
            model: "demand".into(),
            version: 2,
            window_start: 100,
            window_end: 1000,
            offered: 5,
            inputs: vec!["fuel".into(), "temp".into()],
            outputs: vec!["y".into()],
            rows: vec![SampleRow {
                made_at: 150,
                inputs: vec![1.5, 20.0],
                predicted: vec![Value::Number(10.0)],
                truth: vec![Value::Number(12.0)],
            }],
        }
    }

    #[test]
    fn bad_batches_and_instructions_are_refused_with_a_reason() {
        batch().validate().expect("valid");
        let mut wide = batch();
        wide.rows[0].inputs.push(1.0);
        let mut nan = batch();
        nan.rows[0].truth = vec![Value::Number(f64::NAN)];
        let mut few = batch();
        few.offered = 0;
        let mut none = batch();
        none.outputs.clear();
        none.rows.clear();
        let mut label = batch();
        label.rows[0].truth = vec![Value::Label("x".repeat(65))];
        for (b, why) in [
            (wide, "widths"),
            (nan, "non-finite"),
            (few, "offered"),
            (none, "at least one output"),
            (label, "label"),
        ] {
            let e = b.validate().expect_err(why).to_string();
            assert!(e.contains(why), "{e}");
        }
        let i = CaptureInstruction {
            device: "shop-1".into(),
            model: "demand".into(),
            rate_ppm: 500_000,
            max_rows: 100,
            serial: 1,
            issued_at: 10,
            expires_at: 100,
        };
        i.validate_for("shop-1", 50).expect("valid");
        assert!(i.validate_for("shop-2", 50).is_err());
        assert!(i.validate_for("shop-1", 100).is_err());
        for (rate, rows) in [(0, 10), (1_000_001, 10), (5, 0), (5, 10_001)] {
            assert!(check_policy(rate, rows).is_err(), "{rate} {rows}");
        }
    }
}
