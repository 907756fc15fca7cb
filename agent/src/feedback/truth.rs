//! An item's truth read against the prediction it answers: which rows it covers, and each
//! row's true values (a regression) or label (a classifier). Every error says what was
//! expected, for a 400.

use serde_json::Value;

use super::body::{Item, kind};
use super::plan::{Classes, Kept, Label, Prediction, short};

/// One row's truth.
#[derive(Debug, Clone, PartialEq)]
pub enum RowTruth {
    Values(Vec<f64>),
    Label(Label),
}

/// The rows `item` gives the truth of, each with its truth, in row order.
pub fn resolve(
    item: &Item,
    p: &Prediction,
    classes: Classes<'_>,
) -> Result<Vec<(u32, RowTruth)>, String> {
    let rows = p.rows;
    let one = |v: &Value| -> Result<RowTruth, String> {
        match &p.kept {
            Kept::Values { width, .. } => row_values(v, *width as usize).map(RowTruth::Values),
            Kept::Labels { labels, .. } => match v {
                Value::Array(_) => Err(format!(
                    "truth {} is a list: a classifier's row has one label",
                    short(v)
                )),
                _ => labels.truth(v, classes).map(RowTruth::Label),
            },
        }
    };
    if let Some(r) = item.row {
        if r >= rows {
            return Err(format!(
                "row {r} is out of range: the prediction has {rows} row{} (0..={})",
                if rows == 1 { "" } else { "s" },
                rows - 1
            ));
        }
        return Ok(vec![(r, one(&item.truth)?)]);
    }
    if rows == 1 {
        return match one(&item.truth) {
            Ok(t) => Ok(vec![(0, t)]),
            // One truth per row, for a prediction of one row.
            Err(e) => match &item.truth {
                Value::Array(a) if a.len() == 1 => Ok(vec![(0, one(&a[0])?)]),
                _ => Err(e),
            },
        };
    }
    let Value::Array(list) = &item.truth else {
        return Err(format!(
            "the prediction has {rows} rows: send a list with one truth per row, or one item per row with \"row\""
        ));
    };
    if list.len() != rows as usize {
        let flat_hint = match &p.kept {
            Kept::Values { width, .. }
                if *width > 1 && list.len() == rows as usize * *width as usize =>
            {
                format!("; nest it: one list of {width} values per row")
            }
            _ => String::new(),
        };
        return Err(format!(
            "{} truths for a prediction of {rows} rows: send one per row, in order{flat_hint}",
            list.len()
        ));
    }
    list.iter()
        .enumerate()
        .map(|(r, v)| {
            one(v)
                .map(|t| (r as u32, t))
                .map_err(|e| format!("row {r}: {e}"))
        })
        .collect()
}

/// One regression row's true values: a number (a row of one value) or a list of `width`.
fn row_values(v: &Value, width: usize) -> Result<Vec<f64>, String> {
    let number = |v: &Value| -> Result<f64, String> {
        match v {
            Value::Number(n) => n
                .as_f64()
                .filter(|f| f.is_finite())
                .ok_or_else(|| format!("{n} is not a finite number")),
            Value::String(s) => Err(string_truth(s)),
            other => Err(format!(
                "truth {} is {}: a regression's truth is a number per output element",
                short(other),
                kind(other)
            )),
        }
    };
    match v {
        Value::Array(a) => {
            if a.len() != width {
                return Err(format!(
                    "{} value{} for a row of {width} element{}",
                    a.len(),
                    if a.len() == 1 { "" } else { "s" },
                    if width == 1 { "" } else { "s" }
                ));
            }
            a.iter()
                .enumerate()
                .map(|(j, x)| number(x).map_err(|e| format!("element {j}: {e}")))
                .collect()
        }
        _ if width == 1 => number(v).map(|x| vec![x]),
        Value::Number(_) => Err(format!(
            "1 value for a row of {width} elements: send a list of {width} numbers"
        )),
        other => number(other).map(|_| Vec::new()),
    }
}

/// The error for a string where a regression wants a number.
fn string_truth(s: &str) -> String {
    let t = s.trim().to_ascii_lowercase();
    if matches!(
        t.as_str(),
        "nan" | "-nan" | "inf" | "+inf" | "-inf" | "infinity" | "+infinity" | "-infinity"
    ) {
        format!(
            "truth {s:?} is not a finite number: NaN and infinity cannot be scored; leave the row out"
        )
    } else {
        format!(
            "truth {s:?} is a string, but this model is a regression (its first output is floating point): send the true number"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::plan::{Labels, Numbers};
    use serde_json::json;

    fn regression(rows: u32, width: u32) -> Prediction {
        Prediction {
            inputs: vec![],
            version: 1,
            at_ms: 0,
            rows,
            done: vec![],
            kept: Kept::Values {
                width,
                values: Numbers::F32(vec![0.0; (rows * width) as usize]),
            },
        }
    }

    fn item(row: Option<u32>, truth: Value) -> Item {
        Item {
            id: "a".into(),
            row,
            truth,
        }
    }

    fn ok(p: &Prediction, row: Option<u32>, truth: Value) -> Vec<(u32, RowTruth)> {
        resolve(&item(row, truth.clone()), p, Classes::default())
            .unwrap_or_else(|e| panic!("{truth}: {e}"))
    }

    fn err(p: &Prediction, row: Option<u32>, truth: Value) -> String {
        resolve(&item(row, truth.clone()), p, Classes::default()).expect_err(&truth.to_string())
    }

    #[test]
    fn regression_rows_in_every_accepted_form() {
        let v = |x: &[f64]| RowTruth::Values(x.to_vec());
        assert_eq!(
            ok(&regression(1, 1), None, json!(12.5)),
            vec![(0, v(&[12.5]))]
        );
        assert_eq!(
            ok(&regression(1, 2), None, json!([1, 2])),
            vec![(0, v(&[1.0, 2.0]))]
        );
        assert_eq!(
            ok(&regression(1, 2), None, json!([[1, 2]])),
            vec![(0, v(&[1.0, 2.0]))]
        );
        assert_eq!(
            ok(&regression(3, 1), None, json!([[1.0], [2.0], [3.0]])),
            vec![(0, v(&[1.0])), (1, v(&[2.0])), (2, v(&[3.0]))]
        );
        assert_eq!(ok(&regression(3, 1), None, json!([1, 2, 3])).len(), 3);
        assert_eq!(
            ok(&regression(4, 1), Some(3), json!(4.0)),
            vec![(3, v(&[4.0]))]
        );
    }

    #[test]
    fn regression_errors_say_what_was_expected() {
        let cases = [
            (
                regression(1, 1),
                None,
                json!([1.0, 2.0]),
                "2 values for a row of 1 element",
            ),
            (
                regression(1, 2),
                None,
                json!(1.0),
                "1 value for a row of 2 elements",
            ),
            (regression(1, 1), None, json!("cat"), "regression"),
            (regression(1, 1), None, json!("NaN"), "NaN and infinity"),
            (regression(1, 1), None, json!(["inf"]), "NaN and infinity"),
            (regression(1, 1), None, json!(true), "is a bool"),
            (
                regression(4, 1),
                Some(4),
                json!(1.0),
                "row 4 is out of range: the prediction has 4 rows (0..=3)",
            ),
            (
                regression(3, 1),
                None,
                json!(1.0),
                "has 3 rows: send a list",
            ),
            (
                regression(3, 1),
                None,
                json!([1, 2]),
                "2 truths for a prediction of 3 rows",
            ),
            (regression(2, 2), None, json!([1, 2, 3, 4]), "nest it"),
            (
                regression(2, 2),
                None,
                json!([[1, 2], [3]]),
                "row 1: 1 value for a row of 2 elements",
            ),
        ];
        for (p, row, truth, needle) in cases {
            let e = err(&p, row, truth.clone());
            assert!(
                e.contains(needle),
                "{truth}: {e:?} should contain {needle:?}"
            );
        }
    }

    #[test]
    fn classifier_rows() {
        let p = Prediction {
            inputs: vec![],
            version: 1,
            at_ms: 0,
            rows: 2,
            done: vec![],
            kept: Kept::Labels {
                labels: Labels::Int(vec![0, 1]),
                probs: None,
            },
        };
        assert_eq!(
            ok(&p, None, json!([1, "0"])),
            vec![
                (0, RowTruth::Label(Label::Int(1))),
                (1, RowTruth::Label(Label::Int(0)))
            ]
        );
        assert!(err(&p, Some(0), json!([1])).contains("one label"));
        assert!(err(&p, Some(0), json!(2.5)).contains("integer label"));
    }
}
