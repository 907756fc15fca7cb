//! Training samples: what devices captured for models whose capture an admin switched on,
//! summarised and exported as a dataset (CSV) with the digest of exactly what was exported.

use edgefleet_common::Digest;
use edgefleet_common::name;
use edgefleet_common::sample::{SampleBatch, Value};
use serde::Serialize;

use super::{HOUR, Telemetry};
use crate::error::{HubError, HubResult};

/// Most rows one export may hold: narrow the range (or pick a version) beyond it.
pub const MAX_EXPORT_ROWS: u64 = 2_000_000;

/// What the hub holds of a model's samples.
#[derive(Debug, Serialize)]
pub struct SamplesSummary {
    pub model: String,
    pub batches: u64,
    pub rows: u64,
    pub bytes: u64,
    /// The newest batch's columns, as an export names them.
    pub columns: Vec<String>,
}

/// An exported dataset.
#[derive(Debug)]
pub struct Dataset {
    pub csv: Vec<u8>,
    /// SHA-256 of `csv`: the identity of exactly these rows (a retraining run records it).
    pub sha256: Digest,
    pub rows: u64,
    pub batches: u64,
    /// The CSV's columns and their types.
    pub schema: TableSchema,
}

/// A dataset's columns, as a Frictionless Data Table Schema
/// (<https://specs.frictionlessdata.io/table-schema/>): what pandas, DuckDB or a
/// `frictionless validate` need to read the CSV with the right types.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableSchema {
    pub fields: Vec<Field>,
    /// An empty cell is a missing value (an input that was not a finite number).
    #[serde(rename = "missingValues")]
    pub missing_values: Vec<String>,
    #[serde(rename = "primaryKey")]
    pub primary_key: Vec<String>,
}

/// One column of a [`TableSchema`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Field {
    pub name: String,
    /// `string`, `integer` or `number`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `meta` (where and when), `input`, `predicted` or `truth` (Edgefleet's own key: which
    /// columns are features and which the target).
    pub role: &'static str,
    pub description: String,
}

impl TableSchema {
    /// The schema of rows with `inputs` and `outputs` columns; `numeric[0][i]` says whether
    /// output `i`'s predicted values were all numbers (a regression) or not (labels),
    /// `numeric[1][i]` the same of its true values.
    fn new(inputs: &[String], outputs: &[String], numeric: &[Vec<bool>; 2]) -> Self {
        let meta = |name: &str, kind, description: &str| Field {
            name: name.into(),
            kind,
            role: "meta",
            description: description.into(),
        };
        let mut fields = vec![
            meta("device", "string", "the device that captured the row"),
            meta(
                "version",
                "integer",
                "the model version that made the prediction",
            ),
            meta(
                "made_at",
                "integer",
                "when the prediction was made, seconds since the Unix epoch (device clock)",
            ),
        ];
        fields.extend(inputs.iter().map(|i| Field {
            name: i.clone(),
            kind: "number",
            role: "input",
            description: format!("input feature {i}"),
        }));
        for (numeric, role, prefix, what) in [
            (
                &numeric[0],
                "predicted",
                "predicted_",
                "the model's prediction of",
            ),
            (
                &numeric[1],
                "truth",
                "truth_",
                "the true value reported as feedback for",
            ),
        ] {
            fields.extend(outputs.iter().zip(numeric).map(|(o, &n)| Field {
                name: format!("{prefix}{o}"),
                kind: if n { "number" } else { "string" },
                role,
                description: format!("{what} {o}"),
            }));
        }
        Self {
            fields,
            missing_values: vec![String::new()],
            primary_key: Vec::new(),
        }
    }
}

/// Which samples an export takes.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplesQuery {
    pub version: Option<u64>,
    /// Window end at or after (seconds since the epoch; default 0).
    pub from: Option<u64>,
    /// Window end before (default: now + 1 h).
    pub to: Option<u64>,
    /// `csv` (the default): the dataset; `schema`: its Table Schema, row count and digest.
    pub format: Option<String>,
}

/// A CSV field: quoted when it holds a comma, quote or line break (RFC 4180).
fn field(out: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

fn line(out: &mut String, fields: impl IntoIterator<Item = String>) {
    for (i, f) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        field(out, &f);
    }
    out.push('\n');
}

impl Telemetry {
    pub fn samples_summary(&self, model: &str) -> HubResult<SamplesSummary> {
        name::validate(model)?;
        let (batches, rows, bytes) = self.store.samples_stored(model)?;
        let newest = self
            .store
            .sample_batches(model, None, 0, u64::MAX)
            .last()
            .transpose()?;
        Ok(SamplesSummary {
            model: model.to_owned(),
            batches,
            rows,
            bytes,
            columns: newest.map(|b| b.csv_header()).unwrap_or_default(),
        })
    }

    /// The samples of `model` as CSV, oldest window first: one header, one line per row.
    /// Every batch must have the same columns (a version with other inputs: export it alone).
    pub fn export_samples(&self, model: &str, q: &SamplesQuery) -> HubResult<Dataset> {
        let rows = self.sample_rows(model, q)?;
        Ok(rows.dataset(0..rows.lines.len()))
    }

    /// The same rows split in two: the oldest for training, the newest `holdout_share` of
    /// them (at least one row when there are two or more) held out, each a whole CSV with the
    /// header and its own digest. A retraining run gives the trainer the first only, and
    /// scores the candidate against the champion on the second.
    pub fn export_split(
        &self,
        model: &str,
        q: &SamplesQuery,
        holdout_share: f64,
    ) -> HubResult<(Dataset, Dataset)> {
        let rows = self.sample_rows(model, q)?;
        let n = rows.lines.len();
        // The share of n, rounded; never all of them, never none of two or more.
        let held = ((n as f64 * holdout_share.clamp(0.0, 1.0)).round() as usize)
            .clamp(usize::from(n >= 2), n.saturating_sub(1));
        Ok((rows.dataset(0..n - held), rows.dataset(n - held..n)))
    }

    fn sample_rows(&self, model: &str, q: &SamplesQuery) -> HubResult<SampleRows> {
        name::validate(model)?;
        let (from, to) = (
            q.from.unwrap_or(0),
            q.to.unwrap_or_else(|| crate::now() + HOUR),
        );
        if from >= to {
            return Err(HubError::Invalid(format!(
                "from={from} to={to}: the range must not be empty"
            )));
        }
        let mut header_line = String::new();
        let mut lines = Vec::new();
        let mut header: Option<Vec<String>> = None;
        let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
        // Per output: every predicted ([0]) and true ([1]) value so far was a number.
        let mut numeric: [Vec<bool>; 2] = Default::default();
        let mut batches = 0u64;
        for b in self.store.sample_batches(model, q.version, from, to) {
            let b: SampleBatch = b?;
            let h = b.csv_header();
            match &header {
                None => {
                    line(&mut header_line, h.iter().cloned());
                    header = Some(h);
                    inputs.clone_from(&b.inputs);
                    outputs.clone_from(&b.outputs);
                    numeric = [vec![true; b.outputs.len()], vec![true; b.outputs.len()]];
                }
                Some(have) if *have != h => {
                    return Err(HubError::Invalid(format!(
                        "version {} of {model} has other columns than earlier samples: export one version at a time (version=N)",
                        b.version
                    )));
                }
                Some(_) => {}
            }
            if (lines.len() + b.rows.len()) as u64 > MAX_EXPORT_ROWS {
                return Err(HubError::Invalid(format!(
                    "more than {MAX_EXPORT_ROWS} rows: narrow the range (from, to) or pick a version"
                )));
            }
            batches += 1;
            for r in &b.rows {
                for (numeric, values) in numeric.iter_mut().zip([&r.predicted, &r.truth]) {
                    for (i, n) in numeric.iter_mut().enumerate() {
                        *n &= matches!(values.get(i), Some(Value::Number(_)));
                    }
                }
                let values = [
                    b.device_id.clone(),
                    b.version.to_string(),
                    r.made_at.to_string(),
                ]
                .into_iter()
                .chain(r.inputs.iter().map(|x| {
                    if x.is_finite() {
                        x.to_string()
                    } else {
                        String::new()
                    }
                }))
                .chain(r.predicted.iter().map(ToString::to_string))
                .chain(r.truth.iter().map(ToString::to_string));
                let mut l = String::new();
                line(&mut l, values);
                lines.push(l);
            }
        }
        Ok(SampleRows {
            header: header_line,
            lines,
            batches,
            schema: TableSchema::new(&inputs, &outputs, &numeric),
        })
    }
}

/// An export's rows before they are joined: the header line and one line per row.
struct SampleRows {
    header: String,
    lines: Vec<String>,
    batches: u64,
    schema: TableSchema,
}

impl SampleRows {
    /// Rows `range` as one CSV (the header first when there are rows).
    fn dataset(&self, range: std::ops::Range<usize>) -> Dataset {
        let rows = &self.lines[range];
        let mut csv =
            String::with_capacity(self.header.len() + rows.iter().map(String::len).sum::<usize>());
        csv.push_str(&self.header);
        for l in rows {
            csv.push_str(l);
        }
        let csv = csv.into_bytes();
        Dataset {
            sha256: Digest::of(&csv),
            csv,
            rows: rows.len() as u64,
            batches: self.batches,
            schema: self.schema.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use edgefleet_common::sample::SampleRow;
    use edgefleet_common::telemetry::pack_record;
    use edgefleet_common::{SecretKey, Signed, Target};

    use super::*;
    use crate::desired::{AssignRequest, CaptureRequest};
    use crate::error::HubError;
    use crate::telemetry::{Message, Rejected};
    use crate::testkit::Kit;

    fn batch(device: &str, seq: u64, version: u64, end: u64, rows: &[(f64, &str)]) -> SampleBatch {
        SampleBatch {
            device_id: device.into(),
            seq,
            model: "demand".into(),
            version,
            window_start: end - 60,
            window_end: end,
            offered: rows.len() as u64 * 2,
            inputs: vec!["price".into(), "temp".into()],
            outputs: vec!["y".into()],
            rows: rows
                .iter()
                .enumerate()
                .map(|(i, (x, truth))| SampleRow {
                    made_at: end - 30 + i as u64,
                    inputs: vec![*x, f64::NAN],
                    predicted: vec![Value::Number(x * 2.0)],
                    truth: vec![Value::Label((*truth).into())],
                })
                .collect(),
        }
    }

    fn message(key: &SecretKey, topic_device: &str, b: &SampleBatch) -> Message {
        Message::Samples {
            device: topic_device.into(),
            payload: pack_record(
                &Signed::sign(b, key, None)
                    .and_then(|s| s.to_bytes())
                    .expect("sign"),
            ),
        }
    }

    #[tokio::test]
    async fn samples_are_stored_once_and_exported_with_the_digest_of_exactly_those_rows() {
        let kit = Kit::new();
        kit.publish("demand", 1).await;
        let key = kit.enroll("shop-1", &[], true).await;
        let key2 = kit.enroll("shop-2", &[], true).await;
        let t = kit.hub.telemetry.clone();
        let mut accept = t.accept();
        let now = crate::now();
        let first = batch("shop-1", 1, 1, now - 100, &[(1.5, "10"), (2.0, "a,\"b\"")]);
        let second = batch("shop-2", 7, 1, now, &[(3.0, "12")]);
        let out = accept
            .batch(vec![
                message(&key, "shop-1", &first),
                message(&key, "shop-1", &first),
                message(&key2, "shop-2", &second),
            ])
            .await;
        assert_eq!(
            out.acks["shop-1"],
            vec![1, 1],
            "the copy acked as a duplicate"
        );
        assert_eq!(out.acks["shop-2"], vec![7]);
        assert_eq!(accept.stats().stored.load(Ordering::Relaxed), 2);
        // Refusals: another device's batch on shop-1's topic is not acked; a batch of a
        // version the hub lacks and a malformed one are acked and not stored.
        let spoof = message(&key2, "shop-1", &batch("shop-2", 8, 1, now, &[(1.0, "1")]));
        let ghost = message(&key, "shop-1", &batch("shop-1", 2, 9, now, &[(1.0, "1")]));
        let mut wide = batch("shop-1", 3, 1, now, &[(1.0, "1")]);
        wide.rows[0].inputs.push(0.0);
        let wide = message(&key, "shop-1", &wide);
        let out = accept.batch(vec![spoof, ghost, wide]).await;
        assert_eq!(out.acks["shop-1"], vec![2, 3]);
        assert_eq!(accept.stats().rejected(Rejected::BadSignature), 1);
        assert_eq!(accept.stats().rejected(Rejected::UnknownModel), 1);
        assert_eq!(accept.stats().rejected(Rejected::Malformed), 1);
        // The export: oldest window first, labels quoted where CSV needs it, NaN empty.
        let d = t
            .export_samples("demand", &SamplesQuery::default())
            .expect("export");
        let csv = String::from_utf8(d.csv.clone()).expect("utf-8");
        let want = format!(
            "device,version,made_at,price,temp,predicted_y,truth_y\n\
             shop-1,1,{},1.5,,3,10\n\
             shop-1,1,{},2,,4,\"a,\"\"b\"\"\"\n\
             shop-2,1,{},3,,6,12\n",
            now - 130,
            now - 129,
            now - 30
        );
        assert_eq!(csv, want);
        assert_eq!((d.rows, d.batches), (3, 2));
        // Inputs are numbers; a prediction or truth that was ever a label is a string.
        let types: Vec<(&str, &str, &str)> = d
            .schema
            .fields
            .iter()
            .map(|f| (f.name.as_str(), f.kind, f.role))
            .collect();
        assert_eq!(
            types,
            [
                ("device", "string", "meta"),
                ("version", "integer", "meta"),
                ("made_at", "integer", "meta"),
                ("price", "number", "input"),
                ("temp", "number", "input"),
                ("predicted_y", "number", "predicted"),
                ("truth_y", "string", "truth"),
            ]
        );
        let second_only = SamplesQuery {
            from: Some(now - 50),
            ..Default::default()
        };
        let numbers = t.export_samples("demand", &second_only).expect("export");
        assert_eq!(numbers.rows, 1);
        assert_eq!(
            numbers.schema.fields[6].kind, "string",
            "its truth is a label"
        );
        // Split for retraining: the newest rows held out, each part a whole CSV whose rows
        // together are the export's.
        let (train, held) = t
            .export_split("demand", &SamplesQuery::default(), 0.2)
            .expect("split");
        let (train_csv, held_csv) = (
            String::from_utf8(train.csv.clone()).expect("utf-8"),
            String::from_utf8(held.csv.clone()).expect("utf-8"),
        );
        let header = "device,version,made_at,price,temp,predicted_y,truth_y\n";
        assert_eq!((train.rows, held.rows), (2, 1));
        assert_eq!(held_csv, format!("{header}shop-2,1,{},3,,6,12\n", now - 30));
        assert_eq!(
            format!("{train_csv}{}", &held_csv[header.len()..]),
            want,
            "the two parts are the export"
        );
        assert_eq!(train.sha256, Digest::of(&train.csv));
        // Never all rows held out, never none of two or more.
        for (share, want_held) in [(0.0, 1), (0.5, 2), (1.0, 2)] {
            let (_, h) = t
                .export_split("demand", &SamplesQuery::default(), share)
                .expect("split");
            assert_eq!(h.rows, want_held, "share {share}");
        }
        let summary = t.samples_summary("demand").expect("summary");
        assert_eq!((summary.batches, summary.rows), (2, 3));
        assert_eq!(summary.columns.len(), 7);
        // A range or a version narrows it; an empty range is refused.
        let recent = SamplesQuery {
            from: Some(now - 10),
            ..Default::default()
        };
        assert_eq!(t.export_samples("demand", &recent).expect("export").rows, 1);
        let v2 = SamplesQuery {
            version: Some(2),
            ..Default::default()
        };
        assert_eq!(t.export_samples("demand", &v2).expect("export").rows, 0);
        let empty = SamplesQuery {
            from: Some(5),
            to: Some(5),
            ..Default::default()
        };
        assert!(matches!(
            t.export_samples("demand", &empty),
            Err(HubError::Invalid(_))
        ));
        // Pruning: past the retention, then the oldest past the byte cap.
        assert_eq!(t.store.prune_samples(now - 50, u64::MAX).expect("prune"), 1);
        assert_eq!(t.samples_summary("demand").expect("summary").rows, 1);
        assert_eq!(t.store.prune_samples(0, 1).expect("prune"), 1);
        assert_eq!(t.samples_summary("demand").expect("summary").batches, 0);
    }

    #[tokio::test]
    async fn capture_is_checked_and_signed_for_each_device_serving_the_model() {
        let kit = Kit::new();
        kit.publish("demand", 1).await;
        kit.publish("other", 1).await;
        kit.enroll("shop-1", &["eu"], true).await;
        kit.enroll("shop-2", &[], true).await;
        let desired = &kit.hub.desired;
        desired
            .assign(AssignRequest {
                target: Target::Tag("eu".into()),
                model: "demand".into(),
                version: 1,
            })
            .await
            .expect("assign");
        for (rate, rows) in [
            (0.0, 10),
            (1.5, 10),
            (f64::NAN, 10),
            (0.5, 0),
            (0.5, 10_001),
        ] {
            let r = desired
                .set_capture(
                    "demand",
                    Some(CaptureRequest {
                        rate,
                        max_rows: rows,
                    }),
                )
                .await;
            assert!(
                matches!(r, Err(HubError::Invalid(_))),
                "{rate} {rows}: {r:?}"
            );
        }
        let r = desired
            .set_capture(
                "nope",
                Some(CaptureRequest {
                    rate: 0.5,
                    max_rows: 10,
                }),
            )
            .await;
        assert!(matches!(r, Err(HubError::NotFound(_))), "{r:?}");
        // Off by default: no instruction in any bundle.
        let device = |id: &str| kit.hub.devices.get(id).expect("read").expect("device");
        assert!(
            desired
                .issue(&device("shop-1"))
                .expect("issue")
                .capture
                .is_empty()
        );
        let p = desired
            .set_capture(
                "demand",
                Some(CaptureRequest {
                    rate: 0.25,
                    max_rows: 100,
                }),
            )
            .await
            .expect("on")
            .expect("policy");
        assert_eq!((p.rate_ppm, p.max_rows), (250_000, 100));
        let bundle = desired.issue(&device("shop-1")).expect("issue");
        let root = kit.hub.config().trust.clone();
        let c = bundle.capture[0]
            .verify(&root, crate::now())
            .expect("signed by the hub");
        assert_eq!((c.device.as_str(), c.model.as_str()), ("shop-1", "demand"));
        assert_eq!((c.rate_ppm, c.max_rows), (250_000, 100));
        // Issued again unchanged while fresh; shop-2 serves nothing, so it gets none.
        assert_eq!(
            desired.issue(&device("shop-1")).expect("issue").capture,
            bundle.capture
        );
        assert!(
            desired
                .issue(&device("shop-2"))
                .expect("issue")
                .capture
                .is_empty()
        );
        // Off again: gone from the bundle.
        assert!(
            desired
                .set_capture("demand", None)
                .await
                .expect("off")
                .is_none()
        );
        assert!(
            desired
                .issue(&device("shop-1"))
                .expect("issue")
                .capture
                .is_empty()
        );
    }
}
