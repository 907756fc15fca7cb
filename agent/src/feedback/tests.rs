//! The store's bounds and persistence, matching through the queue and the store, and scoring
//! against hand-computed figures.

use edgefleet_common::{DataType, ModelManifest, Tensor, TensorData, TensorSpec};
use serde_json::json;

use super::*;

fn spec(name: &str, datatype: DataType, shape: &[i64], names: &[&str]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype,
        shape: shape.to_vec(),
        feature_names: names.iter().map(|s| s.to_string()).collect(),
    }
}

fn manifest(name: &str, version: u64, outputs: Vec<TensorSpec>) -> ModelManifest {
    ModelManifest {
        name: name.into(),
        version,
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

fn regressor(version: u64) -> ModelManifest {
    manifest(
        "demand",
        version,
        vec![spec("y", DataType::Fp32, &[-1, 1], &[])],
    )
}

fn classifier(classes: &[&str]) -> ModelManifest {
    manifest(
        "churn",
        1,
        vec![
            spec("label", DataType::Int64, &[-1], &[]),
            spec("probabilities", DataType::Fp32, &[-1, 3], classes),
        ],
    )
}

fn plan(m: &ModelManifest) -> Arc<Plan> {
    Arc::new(Plan::for_manifest(m))
}

fn values(y: &[f32]) -> Vec<Tensor> {
    vec![Tensor {
        name: "y".into(),
        shape: vec![y.len() as u64, 1],
        data: TensorData::Fp32(y.to_vec()),
    }]
}

fn labels(l: &[i64], p: &[f32]) -> Vec<Tensor> {
    vec![
        Tensor {
            name: "label".into(),
            shape: vec![l.len() as u64],
            data: TensorData::Int64(l.to_vec()),
        },
        Tensor {
            name: "probabilities".into(),
            shape: vec![l.len() as u64, 3],
            data: TensorData::Fp32(p.to_vec()),
        },
    ]
}

const LIMITS: Limits = Limits {
    max_predictions: 1000,
    max_age_ms: 3_600_000,
    max_bytes: 1 << 30,
};

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("feedback.sqlite");
        Self { _dir: dir, path }
    }

    fn open(&self, limits: Limits) -> Feedback {
        Feedback::open(&self.path, limits, crate::now_ms()).expect("open")
    }
}

fn submit(
    fb: &Feedback,
    model: &str,
    served: Option<u64>,
    body: serde_json::Value,
) -> Result<Outcome, Refusal> {
    fb.submit(model, served, None, body.to_string().as_bytes())
}

fn ok(fb: &Feedback, model: &str, body: serde_json::Value) -> Outcome {
    submit(fb, model, Some(1), body.clone()).unwrap_or_else(|r| panic!("{body}: {r:?}"))
}

fn refused(fb: &Feedback, model: &str, body: serde_json::Value) -> Refusal {
    submit(fb, model, Some(1), body.clone()).expect_err(&body.to_string())
}

/// Records `n` single-row predictions `p0..p{n}` made at `at_ms`, written to the store.
fn record_at(fb: &Feedback, n: usize, from: usize, at_ms: u64) {
    let m = regressor(1);
    for i in from..from + n {
        fb.record_made_at(
            &plan(&m),
            &format!("p{i}"),
            &[],
            &values(&[i as f32]),
            at_ms,
        );
    }
    fb.drain(crate::now_ms()).expect("drain");
}

fn held_ids(fb: &Feedback, n: usize) -> Vec<usize> {
    let store = lock(&fb.store);
    (0..n)
        .filter(|i| {
            store
                .get(&store::key("demand", &format!("p{i}")))
                .expect("get")
                .is_some()
        })
        .collect()
}

#[test]
fn the_count_bound_evicts_the_oldest_and_counts_them() {
    let f = Fixture::new();
    let fb = f.open(Limits {
        max_predictions: 5,
        ..LIMITS
    });
    let now = crate::now_ms();
    record_at(&fb, 4, 0, now - 4000);
    record_at(&fb, 4, 4, now - 2000);
    assert_eq!(held_ids(&fb, 8), vec![3, 4, 5, 6, 7]);
    let s = fb.stats();
    assert_eq!(
        (s.held, s.evicted.count, s.evicted.bytes, s.evicted.age),
        (5, 3, 0, 0)
    );
    // A batch bigger than the bound keeps its newest.
    record_at(&fb, 7, 10, now - 1000);
    assert_eq!(fb.stats().held, 5);
    assert_eq!(fb.stats().evicted.count, 3 + 7);
    let r = refused(
        &fb,
        "demand",
        json!({"feedback": [{"id": "p0", "truth": 1.0}]}),
    );
    assert_eq!(r.status, Status::NotFound);
    assert!(
        r.message.contains("feedback_max_predictions = 5"),
        "{}",
        r.message
    );
    assert!(r.message.contains("10 evicted so far"), "{}", r.message);
}

#[test]
fn the_byte_bound_evicts_the_oldest_and_counts_them() {
    let f = Fixture::new();
    let fb = f.open(LIMITS);
    let now = crate::now_ms();
    record_at(&fb, 10, 0, now - 5000);
    let per_entry = fb.stats().held_bytes / 10;
    drop(fb);
    let fb = f.open(Limits {
        max_bytes: per_entry * 6 + per_entry / 2,
        ..LIMITS
    });
    // Reopened with a smaller bound: the next write gets back within it, oldest first.
    record_at(&fb, 1, 10, now - 1000);
    assert_eq!(held_ids(&fb, 11), vec![5, 6, 7, 8, 9, 10]);
    let s = fb.stats();
    assert_eq!((s.evicted.bytes, s.evicted.count), (5, 0));
    assert!(s.held_bytes <= per_entry * 6 + per_entry / 2, "{s:?}");
}

#[test]
fn the_age_bound_expires_the_oldest_and_counts_them() {
    let f = Fixture::new();
    let fb = f.open(Limits {
        max_age_ms: 10_000,
        ..LIMITS
    });
    let now = crate::now_ms();
    record_at(&fb, 3, 0, now - 20_000);
    // Already too old when written: expired at once.
    assert_eq!(fb.stats().held, 0);
    assert_eq!(fb.stats().evicted.age, 3);
    record_at(&fb, 3, 3, now - 5_000);
    assert_eq!(fb.stats().held, 3);
    // Later, the writer's round expires them with no new prediction.
    fb.drain(now + 6_000).expect("drain");
    assert_eq!(fb.stats().held, 0);
    assert_eq!(fb.stats().evicted.age, 6);
    assert_eq!(fb.stats().evicted.count, 0);
}

#[test]
fn predictions_survive_a_reopen() {
    let f = Fixture::new();
    {
        let fb = f.open(LIMITS);
        let m = regressor(1);
        fb.record(&plan(&m), "a", &[], &values(&[10.0, 20.0]));
        fb.record(&plan(&m), "b", &[], &values(&[5.0]));
        fb.drain(crate::now_ms()).expect("drain");
        // Half of "a" answered before the restart.
        ok(
            &fb,
            "demand",
            json!({"feedback": [{"id": "a", "row": 0, "truth": 12.0}]}),
        );
        drop(fb);
    }
    let fb = f.open(LIMITS);
    assert_eq!(fb.stats().held, 2);
    let o = ok(
        &fb,
        "demand",
        json!({"feedback": [{"id": "a", "row": 1, "truth": 21.0}, {"id": "b", "truth": 4.0}]}),
    );
    assert_eq!(o.matched, 2);
    // Made before this book's window started: late.
    assert_eq!(o.late, 2);
    // Every row done: the entries are gone, and the counters agree.
    assert_eq!(fb.stats().held, 0);
    assert_eq!(fb.stats().held_bytes, 0);
    let r = refused(
        &fb,
        "demand",
        json!({"feedback": [{"id": "a", "row": 0, "truth": 1.0}]}),
    );
    assert_eq!(r.status, Status::NotFound);
}

#[test]
fn regression_mae_rmse_mape_are_the_hand_computed_ones() {
    let f = Fixture::new();
    let fb = f.open(LIMITS);
    let m = regressor(1);
    let pairs = [(10.0f32, 12.0f64), (5.0, 4.0), (3.0, 3.0), (8.0, 0.0)];
    fb.record(&plan(&m), "r1", &[], &values(&[pairs[0].0]));
    fb.record(&plan(&m), "batch", &[], &values(&[pairs[1].0, pairs[2].0]));
    fb.drain(crate::now_ms()).expect("drain");
    fb.record(&plan(&m), "q", &[], &values(&[pairs[3].0]));
    let o = ok(
        &fb,
        "demand",
        json!({"feedback": [
            {"id": "r1", "truth": pairs[0].1},
            {"id": "batch", "truth": [[pairs[1].1], [pairs[2].1]]},
            {"id": "q", "truth": [pairs[3].1]},
            {"id": "nope", "truth": 1.0}
        ]}),
    );
    assert_eq!(
        o,
        Outcome {
            matched: 4,
            late: 0,
            unknown: vec!["nope".into()],
            duplicate: vec![]
        }
    );
    let q = fb.book().take(crate::now_ms());
    assert_eq!(q.len(), 1);
    let q = &q[0];
    let n = pairs.len() as f64;
    let mae = pairs
        .iter()
        .map(|(p, t)| (f64::from(*p) - t).abs())
        .sum::<f64>()
        / n;
    let rmse = (pairs
        .iter()
        .map(|(p, t)| (f64::from(*p) - t).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    let mape = (2.0 / 12.0 + 1.0 / 4.0 + 0.0) / 3.0;
    assert!((q.mae().expect("mae") - mae).abs() < 1e-9);
    assert!((q.rmse().expect("rmse") - rmse).abs() < 1e-9);
    assert!((q.mape().expect("mape") - mape).abs() < 1e-9);
    assert_eq!((q.matched, q.late, q.unknown), (4, 0, 1));
    // Every row had its feedback: nothing held, nothing queued that the writer would store.
    fb.drain(crate::now_ms()).expect("drain");
    assert_eq!(fb.stats().held, 0);
}

#[test]
fn classification_accuracy_and_log_loss_with_int_labels_and_names() {
    for names in [&[][..], &["cat", "dog", "bird"][..], &["0", "1", "2"][..]] {
        let f = Fixture::new();
        let fb = f.open(LIMITS);
        let m = classifier(names);
        let p = [0.7f32, 0.2, 0.1, 0.1, 0.3, 0.6, 0.2, 0.5, 0.3];
        fb.record(&plan(&m), "b", &[], &labels(&[0, 2, 1], &p));
        fb.drain(crate::now_ms()).expect("drain");
        fb.record(&plan(&m), "c", &[], &labels(&[0], &p[..3]));
        // Truths: 0 (right), 1 (wrong, predicted 2), 1 (right), 2 (wrong, predicted 0).
        let t = |k: usize| -> serde_json::Value {
            if names.first() == Some(&"cat") {
                json!(names[k])
            } else {
                json!(k)
            }
        };
        let o = ok(
            &fb,
            "churn",
            json!({"feedback": [
                {"id": "b", "truth": [t(0), t(1), t(1)]},
                {"id": "c", "row": 0, "truth": t(2)}
            ]}),
        );
        assert_eq!(o.matched, 4, "{names:?}");
        let q = fb.book().take(crate::now_ms()).remove(0);
        assert_eq!(q.accuracy(), Some(0.5), "{names:?}");
        let ll = -[0.7f32, 0.3, 0.5, 0.1]
            .iter()
            .map(|&x| f64::from(x).ln())
            .sum::<f64>()
            / 4.0;
        assert!(
            (q.log_loss().expect("log loss") - ll).abs() < 1e-9,
            "{names:?}"
        );
        let c = q.classification.as_ref().expect("classifier");
        let (truth, predicted) = if names.first() == Some(&"cat") {
            ("dog", "bird")
        } else {
            ("1", "2")
        };
        assert!(
            c.cells().any(|x| x == (truth, predicted, 1)),
            "{names:?}: {:?}",
            c.confusion
        );
    }
}

#[test]
fn a_bool_classifier_without_probabilities() {
    let f = Fixture::new();
    let fb = f.open(LIMITS);
    let m = manifest(
        "flag",
        1,
        vec![spec("is_fraud", DataType::Bool, &[-1], &[])],
    );
    let out = vec![Tensor {
        name: "is_fraud".into(),
        shape: vec![2],
        data: TensorData::Bool(vec![true, false]),
    }];
    fb.record(&plan(&m), "t", &[], &out);
    let o = ok(
        &fb,
        "flag",
        json!({"feedback": [{"id": "t", "truth": [true, 1]}]}),
    );
    assert_eq!(o.matched, 2);
    let q = fb.book().take(crate::now_ms()).remove(0);
    assert_eq!(q.accuracy(), Some(0.5));
    assert_eq!(q.log_loss(), None);
}

#[test]
fn duplicates_conflict_and_bad_items_change_nothing() {
    let f = Fixture::new();
    let fb = f.open(LIMITS);
    let m = regressor(1);
    fb.record(&plan(&m), "a", &[], &values(&[1.0, 2.0]));
    fb.drain(crate::now_ms()).expect("drain");
    // A bad item refuses the whole call: row 0 is not scored.
    let r = refused(
        &fb,
        "demand",
        json!({"feedback": [{"id": "a", "row": 0, "truth": 1.0}, {"id": "a", "row": 5, "truth": 1.0}]}),
    );
    assert_eq!(r.status, Status::BadRequest);
    assert!(
        r.message
            .contains("feedback[1] (id \"a\"): row 5 is out of range"),
        "{}",
        r.message
    );
    assert!(fb.book().take(crate::now_ms()).is_empty());
    let r = refused(
        &fb,
        "demand",
        json!({"feedback": [{"id": "a", "row": 0, "truth": 1.0}, {"id": "a", "row": 0, "truth": 1.0}]}),
    );
    assert!(r.message.contains("given twice"), "{}", r.message);
    assert_eq!(
        ok(&fb, "demand", json!({"id": "a", "row": 0, "truth": 1.0})).matched,
        1
    );
    let r = refused(&fb, "demand", json!({"id": "a", "row": 0, "truth": 1.0}));
    assert_eq!(r.status, Status::Conflict);
    assert_eq!(r.duplicate, vec!["a".to_owned()]);
    // The other row is still open; a call with both reports the duplicate and scores the rest.
    let o = ok(&fb, "demand", json!({"id": "a", "truth": [1.0, 2.5]}));
    assert_eq!((o.matched, o.duplicate.clone()), (1, vec!["a".to_owned()]));
    let r = refused(&fb, "demand", json!({"id": "b", "truth": "NaN"}));
    assert_eq!(r.status, Status::NotFound);
    assert_eq!(r.unknown, vec!["b".to_owned()]);
    // Unknown ids count against the served version.
    let q = fb.book().take(crate::now_ms());
    assert_eq!((q[0].matched, q[0].unknown), (2, 1));
}

#[test]
fn feedback_after_the_window_closed_is_late() {
    let f = Fixture::new();
    let fb = f.open(LIMITS);
    let m = regressor(1);
    fb.record(&plan(&m), "a", &[], &values(&[1.0]));
    fb.record(&plan(&m), "b", &[], &values(&[1.0]));
    assert_eq!(ok(&fb, "demand", json!({"id": "a", "truth": 2.0})).late, 0);
    // The window closes (taking "a"'s score); "b"'s feedback lands in the next, late.
    let first = fb.book().take(crate::now_ms() + 1);
    assert_eq!((first[0].matched, first[0].late), (1, 0));
    assert_eq!(ok(&fb, "demand", json!({"id": "b", "truth": 2.0})).late, 1);
    let second = fb.book().take(crate::now_ms() + 1);
    assert_eq!((second[0].matched, second[0].late), (1, 1));
}

/// The queue holds a [`PredictionRef`]'s bytes and the writer reads them as a [`Prediction`]:
/// the two must encode alike for every kind of output.
#[test]
fn a_borrowed_prediction_encodes_as_the_owned_one() {
    let int32_labels = vec![Tensor {
        name: "label".into(),
        shape: vec![2],
        data: TensorData::Int32(vec![2, 0]),
    }];
    let bool_model = manifest("flag", 1, vec![spec("label", DataType::Bool, &[-1], &[])]);
    let bools = vec![Tensor {
        name: "label".into(),
        shape: vec![2],
        data: TensorData::Bool(vec![true, false]),
    }];
    let fp64 = vec![Tensor {
        name: "y".into(),
        shape: vec![2, 1],
        data: TensorData::Fp64(vec![1.5, -2.25]),
    }];
    let cases = [
        (regressor(3), values(&[1.5, 2.5])),
        (regressor(3), fp64),
        (
            classifier(&["a", "b", "c"]),
            labels(&[2, 0], &[0.1, 0.2, 0.7, 0.6, 0.3, 0.1]),
        ),
        (classifier(&["a", "b", "c"]), int32_labels),
        (bool_model, bools),
    ];
    for (m, outputs) in cases {
        let p = plan(&m);
        let (rows, kept) = p.keep(&outputs).expect("kept");
        let inputs = [0.5, f64::NAN, 3.0, 4.0];
        let borrowed = PredictionRef {
            version: m.version,
            at_ms: 1_700_000_000_123,
            rows,
            done: &[],
            kept,
            inputs: &inputs,
        };
        let bytes = postcard::to_allocvec(&borrowed).expect("encode");
        let owned: Prediction = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(owned.rows, 2, "{}", m.name);
        assert_eq!(owned.at_ms, 1_700_000_000_123);
        assert!(owned.done.is_empty());
        assert_eq!(owned.inputs.len(), 4);
        assert_eq!(
            postcard::to_allocvec(&owned).expect("encode"),
            bytes,
            "{}",
            m.name
        );
    }
}

/// Feedback given while a prediction waits in the queue is kept when the writer stores it.
#[test]
fn marks_given_in_the_queue_reach_the_store() {
    let f = Fixture::new();
    let fb = f.open(LIMITS);
    let m = regressor(1);
    let p = plan(&m);
    fb.record(&p, "two", &[], &values(&[1.0, 2.0]));
    fb.record(&p, "one", &[], &values(&[5.0]));
    assert_eq!(fb.stats().queued, 2);
    let o = ok(
        &fb,
        "demand",
        json!({"feedback": [{"id": "two", "row": 1, "truth": 2.5}]}),
    );
    assert_eq!(o.matched, 1);
    // "one" is answered in full while queued: the writer does not store it.
    assert_eq!(
        ok(&fb, "demand", json!({"id": "one", "truth": 4.0})).matched,
        1
    );
    fb.drain(crate::now_ms()).expect("drain");
    assert_eq!(fb.stats().queued, 0);
    assert_eq!(lock(&fb.store).held().0, 1);
    let r = refused(
        &fb,
        "demand",
        json!({"feedback": [{"id": "two", "row": 1, "truth": 2.5}]}),
    );
    assert_eq!(r.status, Status::Conflict);
    assert_eq!(
        ok(
            &fb,
            "demand",
            json!({"feedback": [{"id": "two", "row": 0, "truth": 1.0}]})
        )
        .matched,
        1
    );
}

/// The files beside the store's (`feedback.sqlite.unreadable-…`).
fn set_aside(f: &Fixture) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(f._dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("feedback.sqlite.unreadable-"))
        .collect();
    names.sort();
    names
}

/// A store file that is not one (a disk error, a truncated copy) costs the predictions it
/// held, never the agent's start: it is moved aside, kept for a look, and a new store works.
#[test]
fn an_unreadable_store_is_moved_aside_and_a_new_one_works() {
    let f = Fixture::new();
    std::fs::write(&f.path, vec![0x5a; 64 * 1024]).expect("garbage");
    let fb = f.open(LIMITS);
    assert_eq!(fb.stats().held, 0);
    let aside = set_aside(&f);
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(f._dir.path().join(&aside[0]))
            .expect("aside")
            .len(),
        64 * 1024,
        "the bad file is kept as it was"
    );
    record_at(&fb, 3, 0, crate::now_ms());
    drop(fb);
    let fb = f.open(LIMITS);
    assert_eq!(fb.stats().held, 3);
    assert_eq!(set_aside(&f).len(), 1, "a good store is not moved");
}

/// A store written by a newer agent (a downgrade) is not read with the wrong schema.
#[test]
fn a_store_of_a_newer_format_is_moved_aside() {
    let f = Fixture::new();
    drop(f.open(LIMITS));
    let conn = rusqlite::Connection::open(&f.path).expect("sqlite");
    conn.pragma_update(None, "user_version", 99)
        .expect("version");
    drop(conn);
    let fb = f.open(LIMITS);
    assert_eq!(set_aside(&f).len(), 1);
    record_at(&fb, 2, 0, crate::now_ms());
    assert_eq!(fb.stats().held, 2);
}

/// The counters are kept in the same transaction as the predictions: a store opened after
/// any sequence of writes, evictions and answers counts exactly what it holds.
#[test]
fn the_counters_agree_with_the_rows_after_a_reopen() {
    let f = Fixture::new();
    let limits = Limits {
        max_predictions: 7,
        ..LIMITS
    };
    let fb = f.open(limits);
    let now = crate::now_ms();
    record_at(&fb, 10, 0, now - 3000);
    // p5 answered in full: removed; an id recorded again replaces its prediction.
    ok(&fb, "demand", json!({"id": "p5", "truth": 1.0}));
    record_at(&fb, 1, 9, now - 1000);
    let before = fb.stats();
    drop(fb);
    let fb = f.open(limits);
    let after = fb.stats();
    assert_eq!(
        (after.held, after.held_bytes),
        (before.held, before.held_bytes)
    );
    assert_eq!(held_ids(&fb, 10), vec![3, 4, 6, 7, 8, 9]);
    let conn = rusqlite::Connection::open(&f.path).expect("sqlite");
    let (rows, bytes): (i64, i64) = conn
        .query_row(
            "SELECT count(*), coalesce(sum(size), 0) FROM prediction",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("count");
    assert_eq!((rows as u64, bytes as u64), (after.held, after.held_bytes));
}

/// Earlier agents kept the store in the outbox's sled database: its trees go at the upgrade,
/// the outbox's stay.
#[test]
fn an_earlier_agents_sled_trees_are_dropped() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = sled::Config::new()
        .path(dir.path().join("outbox"))
        .open()
        .expect("db");
    for tree in ["feedback_predictions", "feedback_by_time", "records"] {
        db.open_tree(tree)
            .expect("tree")
            .insert(b"k", b"v".as_slice())
            .expect("insert");
    }
    store::drop_sled_trees(&db);
    let names: Vec<Vec<u8>> = db.tree_names().into_iter().map(|n| n.to_vec()).collect();
    assert!(names.contains(&b"records".to_vec()));
    assert!(!names.contains(&b"feedback_predictions".to_vec()));
    assert!(!names.contains(&b"feedback_by_time".to_vec()));
}
