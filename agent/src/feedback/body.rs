//! The feedback request body: what callers send, checked for shape before anything is
//! looked up. The truths are interpreted later, against the prediction they answer.
//!
//! ```json
//! {"feedback": [{"id": "req-1", "truth": 12.5},
//!               {"id": "batch-7", "row": 3, "truth": 4.0},
//!               {"id": "batch-8", "truth": [[1.0], [2.0], [3.0]]}]}
//! ```
//!
//! or one item on its own, `{"truth": 12.5}` with the id in the `x-request-id` (or
//! `inference-request-id`) header, or `{"id": "req-1", "truth": 12.5}`.

use serde_json::{Map, Value};

use super::plan::MAX_ID_BYTES;
use super::{Refusal, Status};

/// Largest feedback body.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Most items in one call.
pub const MAX_ITEMS: usize = 1024;

/// One item: the truth of prediction `id` (of its row `row`, or of all its rows).
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: String,
    pub row: Option<u32>,
    pub truth: Value,
}

const FORM: &str = r#"send {"feedback": [{"id": "<the inference request's id>", "truth": <value>}, ...]}, or {"truth": <value>} with the id in the x-request-id header"#;

fn bad(message: String) -> Refusal {
    Refusal::new(Status::BadRequest, message)
}

/// Parses a body; `header_id` is the request id header's value, for the single-item form.
pub fn parse(body: &[u8], header_id: Option<&str>) -> Result<Vec<Item>, Refusal> {
    if body.len() > MAX_BODY_BYTES {
        return Err(Refusal::new(
            Status::TooLarge,
            format!(
                "the body is {} bytes, over the limit of {MAX_BODY_BYTES}: split the feedback into several calls",
                body.len()
            ),
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        if e.to_string().starts_with("number out of range") {
            bad(format!(
                "a number is out of range (beyond what a 64-bit float holds), at line {} column {}: truths must be finite numbers",
                e.line(),
                e.column()
            ))
        } else {
            bad(format!("malformed feedback JSON: {e}; {FORM}"))
        }
    })?;
    let Value::Object(top) = value else {
        return Err(bad(format!(
            "the body is JSON {}, not an object; {FORM}",
            kind(&value)
        )));
    };
    if let Some(list) = top.get("feedback") {
        if let Some(k) = top.keys().find(|k| *k != "feedback") {
            return Err(bad(format!(
                "unknown field {k:?} beside \"feedback\"; {FORM}"
            )));
        }
        let Value::Array(list) = list else {
            return Err(bad(format!(
                "\"feedback\" is {}, not a list; {FORM}",
                kind(list)
            )));
        };
        if list.is_empty() {
            return Err(bad(format!("the feedback list is empty; {FORM}")));
        }
        if list.len() > MAX_ITEMS {
            return Err(Refusal::new(
                Status::TooLarge,
                format!(
                    "{} items in one call, over the limit of {MAX_ITEMS}: split them into several calls",
                    list.len()
                ),
            ));
        }
        list.iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Object(o) => item(o, None).map_err(|e| bad(format!("feedback[{i}]: {e}"))),
                other => Err(bad(format!(
                    "feedback[{i}] is {}, not an object with \"id\" and \"truth\"",
                    kind(other)
                ))),
            })
            .collect()
    } else {
        item(&top, header_id).map(|i| vec![i]).map_err(bad)
    }
}

fn item(o: &Map<String, Value>, header_id: Option<&str>) -> Result<Item, String> {
    if let Some(k) = o
        .keys()
        .find(|k| !matches!(k.as_str(), "id" | "row" | "truth"))
    {
        return Err(format!(
            "unknown field {k:?} (an item has \"id\", \"truth\" and optionally \"row\"); {FORM}"
        ));
    }
    let id = match (o.get("id"), header_id) {
        (Some(Value::String(s)), _) => s.clone(),
        (Some(other), _) => {
            return Err(format!("\"id\" is {}, not a string", kind(other)));
        }
        (None, Some(h)) => h.to_owned(),
        (None, None) => {
            return Err(format!(
                "missing \"id\": give the id of the inference request this is the truth for; {FORM}"
            ));
        }
    };
    if id.is_empty() {
        return Err("\"id\" is empty".into());
    }
    if id.len() > MAX_ID_BYTES {
        return Err(format!(
            "\"id\" is {} bytes; ids longer than {MAX_ID_BYTES} bytes are not kept, so none can match",
            id.len()
        ));
    }
    let row = match o.get("row") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|r| u32::try_from(r).ok())
                .ok_or_else(|| {
                    format!(
                        "\"row\" is {}: it must be the index of a row of the request (0, 1, ...)",
                        super::plan::short(v)
                    )
                })?,
        ),
    };
    let truth = match o.get("truth") {
        None | Some(Value::Null) => {
            return Err(format!(
                "id {id:?}: missing \"truth\" (the true value or label)"
            ));
        }
        Some(v) => v.clone(),
    };
    Ok(Item { id, row, truth })
}

/// "a number", "a string", … for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: &str, header: Option<&str>) -> (Status, String) {
        let r = parse(body.as_bytes(), header).expect_err(body);
        (r.status, r.message)
    }

    #[test]
    fn both_forms_parse() {
        let items = parse(
            br#"{"feedback": [{"id": "a", "truth": 1.5}, {"id": "b", "row": 2, "truth": "cat"}]}"#,
            Some("ignored"),
        )
        .expect("list");
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].row, Some(2));
        let one = parse(br#"{"truth": [1, 2]}"#, Some("h")).expect("single");
        assert_eq!(one[0].id, "h");
        let body_wins = parse(br#"{"id": "b", "truth": 1}"#, Some("h")).expect("single");
        assert_eq!(body_wins[0].id, "b");
    }

    #[test]
    fn every_shape_error_is_precise() {
        let cases = [
            (r#"{"feedback": []}"#, Status::BadRequest, "empty"),
            (r#"{"truth": 1}"#, Status::BadRequest, "missing \"id\""),
            (
                r#"{"feedback": [{"truth": 1}]}"#,
                Status::BadRequest,
                "feedback[0]: missing \"id\"",
            ),
            (
                r#"{"feedback": [{"id": "a"}]}"#,
                Status::BadRequest,
                "missing \"truth\"",
            ),
            (
                r#"{"feedback": [{"id": 5, "truth": 1}]}"#,
                Status::BadRequest,
                "not a string",
            ),
            (
                r#"{"feedback": [{"id": "a", "row": -1, "truth": 1}]}"#,
                Status::BadRequest,
                "\"row\" is -1",
            ),
            (
                r#"{"feedback": [{"id": "a", "truth": 1, "truths": 2}]}"#,
                Status::BadRequest,
                "unknown field \"truths\"",
            ),
            (
                r#"{"feedback": {"id": "a"}}"#,
                Status::BadRequest,
                "not a list",
            ),
            (r#"[1]"#, Status::BadRequest, "not an object"),
            (
                r#"{"feedback": [{"id": "a", "truth": 1e400}]}"#,
                Status::BadRequest,
                "out of range",
            ),
            (r#"{"feedback": ["#, Status::BadRequest, "malformed"),
        ];
        for (body, status, needle) in cases {
            let (s, m) = refused(body, None);
            assert_eq!(s, status, "{body}: {m}");
            assert!(
                m.contains(needle),
                "{body}: {m:?} should contain {needle:?}"
            );
        }
        let many = format!(
            r#"{{"feedback": [{}]}}"#,
            vec![r#"{"id": "a", "truth": 1}"#; MAX_ITEMS + 1].join(",")
        );
        assert_eq!(refused(&many, None).0, Status::TooLarge);
        let long = format!(
            r#"{{"id": "{}", "truth": 1}}"#,
            "x".repeat(MAX_ID_BYTES + 1)
        );
        assert!(refused(&long, None).1.contains("longer than"));
    }
}
