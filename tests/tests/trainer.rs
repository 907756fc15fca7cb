//! The reference trainer through its contract: a job directory in, `model.onnx` and
//! `metrics.json` out, run as the real `edgefleet-train` binary; the model is served by the
//! agent's engine and answers as the trainer predicted; the same inputs give the same bytes;
//! bad jobs fail with a message and leave no model.

mod support;

use std::path::Path;
use std::process::Command;

use edgefleet_agent::model::LoadedModel;
use edgefleet_common::{DataType, Tensor, TensorData, TensorSpec};
use edgefleet_trainer::{Dataset, Params, ParentManifest};
use serde_json::json;
use support::bin;

use edgefleet_tests::demand::{
    FEATURES, busy_day_csv, classifier_parent, demand_csv, parent, schema,
};

fn job(dir: &Path, csv: &str, params: serde_json::Value) {
    job_of(dir, csv, params, &parent());
}

/// A job for a model whose manifest (tensors) is `parent`.
fn job_of(dir: &Path, csv: &str, params: serde_json::Value, parent: &serde_json::Value) {
    std::fs::create_dir_all(dir.join("parent")).expect("mkdir");
    std::fs::write(dir.join("dataset.csv"), csv).expect("write");
    std::fs::write(dir.join("dataset.schema.json"), schema().to_string()).expect("write");
    std::fs::write(dir.join("params.json"), params.to_string()).expect("write");
    std::fs::write(dir.join("parent/manifest.json"), parent.to_string()).expect("write");
}

fn train(dir: &Path) -> (bool, String) {
    let out = Command::new(bin("edgefleet-train"))
        .arg(dir)
        .output()
        .expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the binary on the same job in two directories under `tmp`: the first directory, the
/// model's bytes (asserted the same both times) and its metrics.
fn train_twice(
    tmp: &Path,
    csv: &str,
    params: &serde_json::Value,
    parent: &serde_json::Value,
) -> (std::path::PathBuf, Vec<u8>, serde_json::Value) {
    let (a, b) = (tmp.join("a"), tmp.join("b"));
    for d in [&a, &b] {
        job_of(d, csv, params.clone(), parent);
        let (ok, err) = train(d);
        assert!(ok, "{params}: {err}");
    }
    let bytes = std::fs::read(a.join("model.onnx")).expect("model");
    assert_eq!(
        bytes,
        std::fs::read(b.join("model.onnx")).expect("model"),
        "{params}: not reproducible"
    );
    let metrics = serde_json::from_slice(&std::fs::read(a.join("metrics.json")).expect("metrics"))
        .expect("json");
    (a, bytes, metrics)
}

/// Every output of `model` for `rows`, in one batch, as the agent serves them.
fn infer(model: &LoadedModel, rows: &Dataset) -> Vec<Tensor> {
    let x: Vec<f32> = rows.x.iter().map(|&v| v as f32).collect();
    model
        .infer(
            &[Tensor {
                name: "x".into(),
                shape: vec![rows.rows() as u64, 7],
                data: TensorData::Fp32(x),
            }],
            &[],
        )
        .expect("infer")
}

/// The rows the trainer held out, as the agent would get them.
fn holdout(csv: &str, params: &Params) -> Dataset {
    let sig = ParentManifest::parse(parent().to_string().as_bytes())
        .expect("parent")
        .signature()
        .expect("signature");
    let d =
        Dataset::read(csv.as_bytes(), schema().to_string().as_bytes(), &sig, None).expect("read");
    let held = (d.rows() as f64 * params.validation).floor() as usize;
    d.slice(d.rows() - held..d.rows())
}

fn serve(dir: &Path) -> LoadedModel {
    let artifact = std::fs::read(dir.join("model.onnx")).expect("model.onnx");
    let spec = |name: &str, shape: Vec<i64>, names: Vec<String>| TensorSpec {
        name: name.into(),
        datatype: DataType::Fp32,
        shape,
        feature_names: names,
    };
    let manifest = edgefleet_tests::plain_manifest(
        "demand",
        &artifact,
        vec![spec(
            "x",
            vec![-1, 7],
            FEATURES.iter().map(|s| s.to_string()).collect(),
        )],
        vec![spec("y", vec![-1, 1], vec![])],
    );
    LoadedModel::load(manifest, &dir.join("model.onnx")).expect("the agent loads it")
}

#[test]
fn both_models_train_serve_as_predicted_and_repeat_byte_for_byte() {
    let csv = demand_csv(3_000, 1);
    for params in [
        json!({"model": "ridge", "alpha": 0.1, "seed": 3}),
        json!({"model": "gbt", "seed": 3, "iterations": 60, "max_depth": 4}),
    ] {
        let tmp = tempfile::tempdir().expect("tmp");
        let (a, bytes, metrics) = train_twice(tmp.path(), &csv, &params, &parent());
        let validation_mae = metrics["validation"]["mae"]
            .as_f64()
            .expect("validation mae");
        // The noise alone is uniform on ±2 (MAE 1); a useful model is within a few units,
        // where predicting the mean is off by about 15.
        eprintln!("{params}: {metrics}");
        assert!(validation_mae < 6.0, "{params}: {metrics}");
        assert_eq!(metrics["validation"]["rows"], 600);

        // The agent's engine answers as the trainer predicted, row for row, missing cells too.
        let p: Params = serde_json::from_value(params.clone()).expect("params");
        let rows = holdout(&csv, &p);
        let trained = edgefleet_trainer::train(
            &Dataset::read(
                csv.as_bytes(),
                schema().to_string().as_bytes(),
                &ParentManifest::parse(parent().to_string().as_bytes())
                    .expect("p")
                    .signature()
                    .expect("s"),
                None,
            )
            .expect("read"),
            &p,
            &ParentManifest::parse(parent().to_string().as_bytes())
                .expect("p")
                .signature()
                .expect("s"),
        )
        .expect("train");
        assert_eq!(trained.onnx, bytes, "the library and the binary agree");
        let model = serve(&a);
        let out = infer(&model, &rows);
        let TensorData::Fp32(served) = &out[0].data else {
            panic!("{:?}", out[0].data)
        };
        let mut missing_rows = 0;
        for (i, got) in served.iter().enumerate() {
            let want = trained.fitted.predict_row(rows.row(i));
            let got = f64::from(*got);
            missing_rows += usize::from(rows.row(i).iter().any(|v| v.is_nan()));
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                "{params} row {i}: served {got}, trainer {want}"
            );
        }
        assert!(missing_rows > 0, "the holdout has missing cells");
    }
}

/// The pinned fixtures venv's Python (`tools/fixtures/check.sh` makes `target/fixtures-venv`),
/// or `EDGEFLEET_SKLEARN_PYTHON`; without it a test is skipped, with a line saying so, unless
/// `EDGEFLEET_REQUIRE_SKLEARN` is set (CI), which makes it a failure.
fn pinned_venv(what: &str) -> Option<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = std::env::var_os("EDGEFLEET_SKLEARN_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target/fixtures-venv/bin/python"));
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var_os("EDGEFLEET_REQUIRE_SKLEARN").is_none(),
        "no Python at {}: run tools/fixtures/check.sh first",
        python.display()
    );
    eprintln!("{what} was not run: no venv at {}", python.display());
    None
}

/// onnxruntime (the pinned wheel, the reference the agent's ONNX-ML operators are checked
/// against) runs the reference trainer's models and answers as the trainer predicted, row for
/// row, missing cells included. CI runs it after the fixture check with
/// `EDGEFLEET_REQUIRE_SKLEARN=1`.
#[test]
fn pinned_venv_onnxruntime_agrees_with_the_reference_trainer() {
    let Some(python) = pinned_venv("the onnxruntime check of the reference trainer") else {
        return;
    };
    let (regression, classification) = (demand_csv(2_000, 5), busy_day_csv(2_000, 5));
    for (params, csv, parent) in [
        (
            json!({"model": "ridge", "alpha": 0.1, "seed": 3, "validation": 0.2}),
            &regression,
            parent(),
        ),
        (
            json!({"model": "gbt", "seed": 3, "iterations": 60, "max_depth": 4, "validation": 0.2}),
            &regression,
            parent(),
        ),
        (
            json!({"model": "logistic", "alpha": 0.01, "validation": 0.2}),
            &classification,
            classifier_parent(),
        ),
        (
            json!({"model": "gbt", "seed": 3, "iterations": 60, "max_depth": 4, "validation": 0.2}),
            &classification,
            classifier_parent(),
        ),
    ] {
        let parent_sig = ParentManifest::parse(parent.to_string().as_bytes())
            .expect("parent")
            .signature()
            .expect("signature");
        let data = Dataset::read(
            csv.as_bytes(),
            schema().to_string().as_bytes(),
            &parent_sig,
            None,
        )
        .expect("read");
        let p: Params = serde_json::from_value(params.clone()).expect("params");
        let trained = edgefleet_trainer::train(&data, &p, &parent_sig).expect("train");
        let rows =
            data.slice(data.rows() - (data.rows() as f64 * p.validation) as usize..data.rows());
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::write(tmp.path().join("model.onnx"), &trained.onnx).expect("write");
        // JSON has no NaN: a missing cell travels as null.
        let x: Vec<Vec<Option<f64>>> = (0..rows.rows())
            .map(|i| {
                rows.row(i)
                    .iter()
                    .map(|v| v.is_finite().then_some(*v))
                    .collect()
            })
            .collect();
        std::fs::write(
            tmp.path().join("x.json"),
            serde_json::to_vec(&x).expect("json"),
        )
        .expect("write");
        let out = Command::new(&python)
            .arg("-c")
            .arg(ORT_PREDICT)
            .arg(tmp.path())
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Each output, row by row.
        let outputs: Vec<Vec<Vec<f64>>> =
            serde_json::from_slice(&out.stdout).expect("onnxruntime's answers");
        let mut missing_rows = 0;
        for i in 0..rows.rows() {
            let row = rows.row(i);
            missing_rows += usize::from(row.iter().any(|v| v.is_nan()));
            agrees(&trained.fitted, row, &outputs, i, &params.to_string());
        }
        assert!(missing_rows > 0, "the holdout has missing cells");
        eprintln!(
            "{params}: onnxruntime agrees on {} rows ({missing_rows} with missing cells)",
            rows.rows()
        );
    }
}

/// Whether row `i` of a model's `outputs` (each output's rows) is what the trainer predicts
/// for `row`: a regression's value within 1e-4 (relative above 1); a classifier's label (unless
/// its log-odds are within 1e-4 of 0, where f32 and f64 may round apart) and its probabilities
/// within 1e-5.
fn agrees(
    fitted: &edgefleet_trainer::Fitted,
    row: &[f64],
    outputs: &[Vec<Vec<f64>>],
    i: usize,
    what: &str,
) {
    let Some(s) = fitted.log_odds(row) else {
        let (got, want) = (outputs[0][i][0], fitted.predict_row(row));
        assert!(
            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{what} row {i}: served {got}, trainer {want}"
        );
        return;
    };
    if s.abs() > 1e-4 {
        assert_eq!(
            outputs[0][i][0] as i64,
            fitted.label_row(row).expect("a label"),
            "{what} row {i}: log-odds {s}"
        );
    }
    let p1 = fitted.predict_row(row);
    let probs = &outputs[1][i];
    assert!(
        (probs[1] - p1).abs() <= 1e-5 && (probs[0] - (1.0 - p1)).abs() <= 1e-5,
        "{what} row {i}: served {probs:?}, trainer P(1) {p1}"
    );
}

/// Runs DIR/model.onnx on DIR/x.json (rows, null = missing) with onnxruntime, one thread, and
/// prints each output's rows as JSON.
const ORT_PREDICT: &str = r#"
import json, sys
import numpy as np
import onnxruntime as ort
d = sys.argv[1]
rows = json.load(open(d + "/x.json"))
x = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=np.float32)
o = ort.SessionOptions()
o.intra_op_num_threads = 1
s = ort.InferenceSession(d + "/model.onnx", o, providers=["CPUExecutionProvider"])
ys = s.run(None, {s.get_inputs()[0].name: x})
print(json.dumps([np.asarray(y).reshape(len(rows), -1).astype(np.float64).tolist() for y in ys]))
"#;

/// The reference trainer's binary classifiers (logistic regression and trees with log-loss):
/// the same job gives the same bytes; the agent's engine serves their labels and probabilities
/// as the trainer predicted, row for row, missing cells included; a regression's model or a
/// label other than 0 and 1 is refused with the reason.
#[test]
fn both_classifiers_train_serve_as_predicted_and_repeat_byte_for_byte() {
    let csv = busy_day_csv(3_000, 1);
    let parent = classifier_parent();
    for params in [
        json!({"model": "logistic", "alpha": 0.01, "seed": 3}),
        json!({"model": "gbt", "seed": 3, "iterations": 60, "max_depth": 4}),
    ] {
        let tmp = tempfile::tempdir().expect("tmp");
        let (a, bytes, metrics) = train_twice(tmp.path(), &csv, &params, &parent);
        eprintln!("{params}: {metrics}");
        let accuracy = metrics["validation"]["accuracy"]
            .as_f64()
            .expect("accuracy");
        // Half the days are busy: a useless model is right half the time.
        assert!(accuracy > 0.8, "{params}: {metrics}");
        assert!(
            metrics["validation"]["log_loss"]
                .as_f64()
                .expect("log-loss")
                < 0.5,
            "{metrics}"
        );

        let sig = ParentManifest::parse(parent.to_string().as_bytes())
            .expect("parent")
            .signature()
            .expect("signature");
        let data = Dataset::read(csv.as_bytes(), schema().to_string().as_bytes(), &sig, None)
            .expect("read");
        let p: Params = serde_json::from_value(params.clone()).expect("params");
        let trained = edgefleet_trainer::train(&data, &p, &sig).expect("train");
        assert_eq!(trained.onnx, bytes, "the library and the binary agree");
        let held = (data.rows() as f64 * p.validation).floor() as usize;
        let rows = data.slice(data.rows() - held..data.rows());
        let manifest: edgefleet_common::ModelManifest = {
            let mut m = edgefleet_tests::plain_manifest("busy", &bytes, vec![], vec![]);
            let spec = |v: serde_json::Value| -> Vec<TensorSpec> {
                serde_json::from_value(v).expect("specs")
            };
            m.inputs = spec(parent["inputs"].clone());
            m.outputs = spec(parent["outputs"].clone());
            m
        };
        let model = LoadedModel::load(manifest, &a.join("model.onnx")).expect("the agent loads it");
        let out = infer(&model, &rows);
        assert!(
            matches!(out[0].data, TensorData::Int64(_)),
            "{:?}",
            out[0].data
        );
        let outputs: Vec<Vec<Vec<f64>>> = out
            .iter()
            .map(|t| {
                let v = t.data.to_f64();
                let width = v.len() / rows.rows();
                v.chunks(width).map(<[f64]>::to_vec).collect()
            })
            .collect();
        let mut missing_rows = 0;
        for i in 0..rows.rows() {
            missing_rows += usize::from(rows.row(i).iter().any(|v| v.is_nan()));
            agrees(
                &trained.fitted,
                rows.row(i),
                &outputs,
                i,
                &params.to_string(),
            );
        }
        assert!(missing_rows > 0, "the holdout has missing cells");
    }

    // A regression's model for a classifier, and labels that are not 0 or 1: refused.
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path().join("ridge");
    job_of(&d, &csv, json!({"model": "ridge"}), &parent);
    let (ok, err) = train(&d);
    assert!(!ok && err.contains("use \"logistic\" or \"gbt\""), "{err}");
    let d = tmp.path().join("logistic");
    job(&d, &demand_csv(200, 1), json!({"model": "logistic"}));
    let (ok, err) = train(&d);
    assert!(!ok && err.contains("use \"ridge\" or \"gbt\""), "{err}");
    let d = tmp.path().join("labels");
    job_of(&d, &demand_csv(200, 1), json!({"model": "gbt"}), &parent);
    let (ok, err) = train(&d);
    assert!(
        !ok && err.contains("a binary classifier's labels, 0 or 1"),
        "{err}"
    );
    for d in ["ridge", "logistic", "labels"] {
        assert!(!tmp.path().join(d).join("model.onnx").exists(), "{d}");
    }
}

/// The Python example trainer (examples/sklearn-trainer: scikit-learn + skl2onnx, pinned) under
/// the same contract: the same job gives the same bytes, and the agent's engine serves its model
/// with the error the trainer measured on its held-out rows. Runs when the pinned venv is there
/// (`tools/fixtures/check.sh` makes `target/fixtures-venv`); CI runs it again after that check
/// with `EDGEFLEET_REQUIRE_SKLEARN=1`, which makes a missing venv a failure.
#[test]
fn pinned_venv_the_python_example_trainer_keeps_the_contract() {
    let Some(python) = pinned_venv("the Python example trainer") else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("examples/sklearn-trainer/train.py");
    let csv = demand_csv(1_000, 4);
    for params in [
        json!({"model": "gbt", "seed": 3, "iterations": 60, "max_depth": 3, "validation": 0.2}),
        json!({"model": "ridge", "alpha": 0.01, "validation": 0.2}),
    ] {
        let tmp = tempfile::tempdir().expect("tmp");
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        for d in [&a, &b] {
            job(d, &csv, params.clone());
            let out = Command::new(&python)
                .arg(&script)
                .arg(d)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .output()
                .expect("python");
            assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let digest = |d: &Path| {
            edgefleet_common::Digest::of(&std::fs::read(d.join("model.onnx")).expect("model.onnx"))
        };
        assert_eq!(digest(&a), digest(&b), "not reproducible");
        let metrics: serde_json::Value =
            serde_json::from_slice(&std::fs::read(a.join("metrics.json")).expect("metrics"))
                .expect("json");
        let trainer_mae = metrics["validation"]["mae"]
            .as_f64()
            .expect("validation mae");
        assert_eq!(metrics["validation"]["rows"], 200, "{metrics}");
        // The agent serves it: its MAE on the same held-out rows is the trainer's.
        let p: Params = serde_json::from_value(params.clone()).expect("params");
        let rows = holdout(&csv, &p);
        let model = serve(&a);
        let out = infer(&model, &rows);
        let served = out[0].data.to_f64();
        let served_mae = served
            .iter()
            .zip(&rows.y)
            .map(|(p, y)| (p - y).abs())
            .sum::<f64>()
            / rows.rows() as f64;
        eprintln!("sklearn {params}: trainer MAE {trainer_mae:.4}, served MAE {served_mae:.4}");
        assert!(trainer_mae < 6.0, "{params}: {metrics}");
        assert!(
            (served_mae - trainer_mae).abs() <= 1e-3 * trainer_mae.max(1.0),
            "served {served_mae}, trainer {trainer_mae}"
        );
    }
    // Bad params are refused, every problem at once, and leave no model.
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path().join("bad");
    job(&d, &csv, json!({"modle": "gbt", "max_depth": 99}));
    let out = Command::new(&python)
        .arg(&script)
        .arg(&d)
        .output()
        .expect("python");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("unknown parameter 'modle'") && err.contains("max_depth 99"),
        "{err}"
    );
    assert!(!d.join("model.onnx").exists());
}

#[test]
fn a_bad_job_fails_with_a_message_and_leaves_no_model() {
    let tmp = tempfile::tempdir().expect("tmp");
    let csv = demand_csv(200, 2);
    type Spoil = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Spoil, &str)> = vec![
        (
            "unknown parameter",
            Box::new(|d: &Path| {
                std::fs::write(d.join("params.json"), r#"{"modle": "gbt"}"#).expect("w")
            }),
            "unknown field",
        ),
        (
            "parameters out of range",
            Box::new(|d: &Path| {
                std::fs::write(d.join("params.json"), r#"{"alpha": -1, "max_depth": 99}"#)
                    .expect("w")
            }),
            "alpha -1 must be",
        ),
        (
            "a cell that is not a number",
            Box::new(|d: &Path| {
                let csv = demand_csv(20, 3);
                let mut lines: Vec<String> = csv.lines().map(str::to_owned).collect();
                let mut cells: Vec<String> = lines[3].split(',').map(str::to_owned).collect();
                cells[4] = "cheap".into();
                lines[3] = cells.join(",");
                std::fs::write(d.join("dataset.csv"), lines.join("\n")).expect("w")
            }),
            "\"cheap\" in column \"price\" is not a number",
        ),
        (
            "a column missing",
            Box::new(|d: &Path| {
                std::fs::write(d.join("dataset.csv"), "device,truth_y\nx,1\n").expect("w")
            }),
            "no column \"day_of_week\"",
        ),
        (
            "a parent the trainer cannot fit",
            Box::new(|d: &Path| {
                std::fs::write(d.join("parent/manifest.json"), r#"{"name":"c","version":1,"inputs":[{"name":"x","datatype":"FP32","shape":[-1,7]}],"outputs":[{"name":"scores","datatype":"FP32","shape":[-1,3]}]}"#).expect("w")
            }),
            "fits a regression",
        ),
        (
            "a classifier with an output the trainer cannot make",
            Box::new(|d: &Path| {
                std::fs::write(d.join("parent/manifest.json"), r#"{"name":"c","version":1,"inputs":[{"name":"x","datatype":"FP32","shape":[-1,7]}],"outputs":[{"name":"y","datatype":"INT64","shape":[-1]},{"name":"p","datatype":"FP32","shape":[-1,3]}]}"#).expect("w")
            }),
            "may have one output, FP32 probabilities [-1, 2]",
        ),
        (
            "no dataset",
            Box::new(|d: &Path| std::fs::remove_file(d.join("dataset.csv")).expect("rm")),
            "dataset.csv",
        ),
        (
            "no target values",
            Box::new(|d: &Path| {
                std::fs::write(
                    d.join("dataset.csv"),
                    format!("{},truth_y\n{}\n", FEATURES.join(","), "1,2,3,4,5,6,7,"),
                )
                .expect("w")
            }),
            "no row has a numeric target",
        ),
    ];
    for (i, (what, spoil, needle)) in cases.into_iter().enumerate() {
        let d = tmp.path().join(format!("job{i}"));
        job(&d, &csv, json!({}));
        spoil(&d);
        let (ok, err) = train(&d);
        assert!(!ok, "{what}: trained anyway");
        assert!(err.contains(needle), "{what}: {err}");
        assert!(!d.join("model.onnx").exists(), "{what}: a model was left");
    }
}

/// The hub's trainer runner with the real reference trainer: the model it reports is the one
/// the trainer wrote, its metrics are the trainer's, its log the trainer's summary line.
#[tokio::test]
async fn the_hubs_runner_runs_the_reference_trainer() {
    use edgefleet_hub::retrain::runner::{TrainerCommand, run};
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("job");
    job(
        &dir,
        &demand_csv(1_000, 4),
        json!({"model": "gbt", "seed": 1, "iterations": 20}),
    );
    let t = TrainerCommand {
        command: vec![bin("edgefleet-train").display().to_string()],
        timeout: std::time::Duration::from_secs(120),
        max_dir_bytes: 64 << 20,
        max_model_bytes: 16 << 20,
        max_log_bytes: 64 << 10,
    };
    let r = run(&t, &dir).await;
    assert_eq!(r.outcome, Ok(()), "{}", r.log);
    assert_eq!(
        r.model.as_deref(),
        Some(
            std::fs::read(dir.join("model.onnx"))
                .expect("model")
                .as_slice()
        )
    );
    assert_eq!(
        r.metrics.as_ref().map(|m| m["model"].clone()),
        Some(json!("gbt"))
    );
    assert!(r.log.contains("trained Gbt on 800 rows"), "{}", r.log);
    // A bad job through the runner: the trainer's message is the run's log.
    std::fs::write(dir.join("params.json"), r#"{"max_depth": 99}"#).expect("write");
    std::fs::remove_file(dir.join("model.onnx")).expect("rm");
    let r = run(&t, &dir).await;
    assert!(r.outcome.is_err());
    assert!(r.log.contains("max_depth 99 must be 1..=16"), "{}", r.log);
    assert!(r.model.is_none());
}

/// `edgefleet` as an admin drives retraining: a policy from a file (a bad one refused with
/// every problem named), a job now, the job's failure with its reason when no samples were
/// captured, the run that says what it had; a real hub, the real CLI and the real trainer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_sets_a_policy_and_retrains_through_the_cli() {
    use support::{Hub, eventually, when};
    let trainer = bin("edgefleet-train").display().to_string();
    let hub = Hub::start_with(|c| c.trainer_command = vec![trainer.clone()]).await;
    hub.push_mlp("demand", 1, 3).await;
    let dir = tempfile::tempdir().expect("tmp");
    let cli = |args: &[&str]| {
        let out = Command::new(bin("edgefleet"))
            .args(["--hub", &hub.url, "--token", &hub.token])
            .args(args)
            .output()
            .expect("edgefleet");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, out) = cli(&["retrain", "now", "demand"]);
    assert!(!ok && out.contains("no retraining policy"), "{out}");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"holdout": 2, "retries": 50, "colour": "red"}"#).expect("write");
    let (ok, out) = cli(&[
        "retrain",
        "policy",
        "demand",
        "--file",
        bad.to_str().expect("utf-8"),
    ]);
    assert!(
        !ok && out.contains("colour"),
        "an unknown key is named: {out}"
    );
    std::fs::write(&bad, r#"{"holdout": 2, "retries": 50}"#).expect("write");
    let (ok, out) = cli(&[
        "retrain",
        "policy",
        "demand",
        "--file",
        bad.to_str().expect("utf-8"),
    ]);
    assert!(
        !ok && out.contains("holdout") && out.contains("retries"),
        "{out}"
    );
    let good = dir.path().join("policy.json");
    std::fs::write(
        &good,
        r#"{"params": {"model": "gbt"}, "seed": 5, "min_rows": 10, "retries": 0}"#,
    )
    .expect("write");
    let (ok, out) = cli(&[
        "retrain",
        "policy",
        "demand",
        "--file",
        good.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&["--json", "retrain", "policy", "demand"]);
    let policy: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(ok && policy["policy"]["seed"] == 5, "{out}");
    let (ok, out) = cli(&["retrain", "now", "demand", "--reason", "a test"]);
    assert!(ok && out.contains("job 1 queued"), "{out}");
    let job = eventually("the job to end", || async {
        let v: serde_json::Value = hub
            .http
            .get(hub.api("retrain/jobs/1"))
            .bearer_auth(&hub.token)
            .send()
            .await
            .map_err(|e| support::Seen(json!(e.to_string())))?
            .json()
            .await
            .map_err(|e| support::Seen(json!(e.to_string())))?;
        when(v["state"] == "failed", v)
    })
    .await;
    assert!(
        job["reason"]
            .as_str()
            .unwrap_or("")
            .contains("0 captured rows"),
        "{job}"
    );
    let (ok, out) = cli(&["retrain", "jobs"]);
    assert!(
        ok && out.contains("failed") && out.contains("a test"),
        "{out}"
    );
    let (ok, out) = cli(&["retrain", "runs", "demand"]);
    assert!(ok && out.contains("failed: 0 captured rows"), "{out}");
    let (ok, out) = cli(&["--json", "retrain", "runs", "demand"]);
    let runs: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(ok, "{out}");
    assert_eq!(runs[0]["params"], json!({"model": "gbt", "seed": 5}));
    assert_eq!(runs[0]["trainer"]["command"], json!([trainer]));
    assert!(runs[0]["trainer"]["program_sha256"].is_string(), "{runs}");
    let (ok, out) = cli(&["runs", "demand"]);
    assert!(ok && out.contains("failed: 0 captured rows"), "{out}");
    // A run that made no model cannot be reproduced; a version no job made cannot be
    // approved; a hand-published version's lineage says so.
    let (ok, out) = cli(&["retrain", "reproduce", "1"]);
    assert!(!ok && out.contains("made no model"), "{out}");
    let (ok, out) = cli(&["approve-model", "demand", "1"]);
    assert!(
        !ok && out.contains("no retraining job published demand v1"),
        "{out}"
    );
    let (ok, out) = cli(&["lineage", "demand", "1"]);
    assert!(
        ok && out.contains("demand v1") && out.contains("published by hand"),
        "{out}"
    );
    let (ok, out) = cli(&["lineage", "demand", "7"]);
    assert!(!ok && out.contains("no version 7"), "{out}");
    // The new endpoints' bad input: a 400 that says what was wrong.
    for (method, path, body, needle) in [
        (
            "POST",
            "models/demand/versions/2/approve",
            "{bad",
            "approval",
        ),
        (
            "POST",
            "models/demand/versions/2/approve",
            r#"{"rollout": {"waves": []}, "colour": 1}"#,
            "colour",
        ),
        (
            "GET",
            "models/demand/versions/abc/lineage",
            "",
            "not a positive integer",
        ),
        (
            "POST",
            "models/demand/versions/-1/approve",
            "",
            "not a positive integer",
        ),
    ] {
        let req = match method {
            "GET" => hub.http.get(hub.api(path)),
            _ => hub.http.post(hub.api(path)).body(body.to_owned()),
        };
        let r = req.bearer_auth(&hub.token).send().await.expect("send");
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert_eq!(status, 400, "{method} {path} {body}: {text}");
        assert!(text.contains(needle), "{method} {path}: {text}");
    }
    let (ok, out) = cli(&["retrain", "policy", "demand", "--off"]);
    assert!(ok && out.contains("\"removed\": true"), "{out}");
}
