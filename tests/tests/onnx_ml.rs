//! Every ONNX-ML fixture (skl2onnx / onnxmltools exports) loads through the agent's real loading
//! path and reproduces onnxruntime's outputs: labels exactly, scores within 1e-5 relative.
//! Operators the agent cannot serve are refused at load time, naming the operator and node.

mod support;

use edgefleet_agent::model::LoadedModel;
use edgefleet_common::{Tensor, TensorData};
use edgefleet_tests::fixtures::{self, Fixture};

/// Relative tolerance on scores, with an absolute floor for values near zero.
const REL: f64 = 1e-5;
const ABS: f64 = 1e-6;

fn compare(fixture: &str, got: &Tensor, want: &Tensor, rows: Option<usize>) -> Result<(), String> {
    let want_shape: Vec<u64> = match rows {
        Some(_) => std::iter::once(1)
            .chain(want.shape[1..].iter().copied())
            .collect(),
        None => want.shape.clone(),
    };
    if got.shape != want_shape || got.data.datatype() != want.data.datatype() {
        return Err(format!(
            "{fixture}: output {:?} is {} {:?}, onnxruntime gives {} {:?}",
            want.name,
            got.data.datatype(),
            got.shape,
            want.data.datatype(),
            want_shape
        ));
    }
    let width: usize = want.shape[1..].iter().product::<u64>() as usize;
    let skip = rows.map_or(0, |r| r * width);
    match (&got.data, &want.data) {
        (TensorData::Int64(g), TensorData::Int64(w)) => {
            for (i, (a, b)) in g.iter().zip(&w[skip..]).enumerate() {
                if a != b {
                    return Err(format!(
                        "{fixture}: {:?}[{}] = {a}, onnxruntime says {b}",
                        want.name,
                        i + skip
                    ));
                }
            }
        }
        (g, w) => {
            let (g, w) = (g.to_f64(), w.to_f64());
            for (i, (a, b)) in g.iter().zip(&w[skip..]).enumerate() {
                let same =
                    (a.is_nan() && b.is_nan()) || (a - b).abs() <= REL * b.abs().max(a.abs()) + ABS;
                if !same {
                    return Err(format!(
                        "{fixture}: {:?}[{}] = {a}, onnxruntime says {b}",
                        want.name,
                        i + skip
                    ));
                }
            }
        }
    }
    Ok(())
}

fn check(f: &Fixture) -> Result<(), String> {
    let manifest = f.manifest().map_err(|e| e.to_string())?;
    let model = LoadedModel::load(manifest, &f.path).map_err(|e| format!("{}: {e}", f.name))?;
    let got = model.infer(std::slice::from_ref(&f.input), &[])?;
    for want in &f.outputs {
        let g = got
            .iter()
            .find(|t| t.name == want.name)
            .ok_or_else(|| format!("{}: no output {:?}", f.name, want.name))?;
        compare(&f.name, g, want, None)?;
    }
    // Batch 1 gives the same answers as the batch (a few rows, including the edge rows).
    let n = f.input.shape[0] as usize;
    for r in [0, n / 2, n - 1] {
        let got = model.infer(&[f.row(r)], &[])?;
        for want in &f.outputs {
            let g = got
                .iter()
                .find(|t| t.name == want.name)
                .ok_or("missing output")?;
            compare(&f.name, g, want, Some(r))?;
        }
    }
    Ok(())
}

#[test]
fn every_fixture_matches_onnxruntime() {
    let all = fixtures::load().expect("fixtures load");
    assert!(all.len() >= 25, "only {} fixtures", all.len());
    let failures: Vec<String> = all.iter().filter_map(|f| check(f).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} fixtures differ from onnxruntime:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

#[test]
fn fixtures_cover_the_operators_the_issue_names() {
    let all = fixtures::load().expect("fixtures load");
    let ops: std::collections::BTreeSet<&str> = all
        .iter()
        .flat_map(|f| f.operators.iter().map(String::as_str))
        .collect();
    for op in [
        "ai.onnx.ml:Scaler",
        "ai.onnx.ml:LinearRegressor",
        "ai.onnx.ml:LinearClassifier",
        "ai.onnx.ml:TreeEnsembleRegressor",
        "ai.onnx.ml:TreeEnsembleClassifier",
        "ai.onnx.ml:Normalizer",
        "ai.onnx.ml:Imputer",
        "ai.onnx.ml:OneHotEncoder",
        "ai.onnx.ml:LabelEncoder",
        "ai.onnx.ml:ArrayFeatureExtractor",
        "ai.onnx.ml:Binarizer",
        "ai.onnx.ml:ZipMap",
        "ai.onnx:Cast",
    ] {
        assert!(
            ops.contains(op),
            "no fixture uses {op}; fixtures use {ops:?}"
        );
    }
}

/// Loads `fixture` after `edit` changed its protobuf; the load error (or "loaded").
fn load_edited(fixture: &str, edit: impl FnOnce(&mut tract_onnx::pb::ModelProto)) -> String {
    use prost::Message;
    let all = fixtures::load().expect("fixtures load");
    let f = all
        .iter()
        .find(|f| f.name == fixture)
        .expect("fixture exists");
    let bytes = std::fs::read(&f.path).expect("read fixture");
    let mut proto = tract_onnx::pb::ModelProto::decode(&bytes[..]).expect("decode");
    edit(&mut proto);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, proto.encode_to_vec()).expect("write");
    match LoadedModel::load(f.manifest().expect("manifest"), &path) {
        Ok(_) => "loaded".into(),
        Err(e) => e.to_string(),
    }
}

fn attr<'a>(
    proto: &'a mut tract_onnx::pb::ModelProto,
    op: &str,
    name: &str,
) -> &'a mut tract_onnx::pb::AttributeProto {
    let graph = proto.graph.as_mut().expect("graph");
    let node = graph
        .node
        .iter_mut()
        .find(|n| n.op_type == op)
        .expect("node");
    node.attribute
        .iter_mut()
        .find(|a| a.name == name)
        .expect("attribute")
}

#[test]
fn unsupported_operator_is_a_load_error_naming_operator_and_node() {
    let err = load_edited("gbr", |p| {
        let node = &mut p.graph.as_mut().expect("graph").node[0];
        node.op_type = "SVMRegressor".into();
        node.name = "svr".into();
    });
    assert!(
        err.contains("ai.onnx.ml:SVMRegressor")
            && err.contains("\"svr\"")
            && err.contains("not supported"),
        "{err}"
    );
    let err = load_edited("gbr", |p| {
        p.graph.as_mut().expect("graph").node[0].domain = "com.example".into();
    });
    assert!(
        err.contains("com.example:TreeEnsembleRegressor") && err.contains("domain"),
        "{err}"
    );
}

#[test]
fn hostile_tree_attributes_are_refused_at_load() {
    // A branch pointing at itself: the walk would never end.
    let err = load_edited("gbr", |p| {
        let ids = attr(p, "TreeEnsembleRegressor", "nodes_nodeids")
            .ints
            .clone();
        let modes = attr(p, "TreeEnsembleRegressor", "nodes_modes")
            .strings
            .clone();
        let i = (1..ids.len())
            .find(|&i| modes[i] != b"LEAF")
            .expect("a branch");
        attr(p, "TreeEnsembleRegressor", "nodes_truenodeids").ints[i] = ids[i];
    });
    // (Its old child is left without a parent, so it shows up as a second root.)
    assert!(err.contains("cycle") || err.contains("2 roots"), "{err}");
    // A three-node tree (0 and 1 branch, 2 is a leaf) with the given children.
    let tiny = |yes: [i64; 3], no: [i64; 3]| {
        load_edited("gbr", move |p| {
            let op = "TreeEnsembleRegressor";
            let graph = p.graph.as_mut().expect("graph");
            let node = graph
                .node
                .iter_mut()
                .find(|n| n.op_type == op)
                .expect("node");
            node.attribute
                .retain(|a| !a.name.starts_with("nodes_") && !a.name.starts_with("target_"));
            let ints = |name: &str, v: &[i64]| tract_onnx::pb::AttributeProto {
                name: name.into(),
                ints: v.to_vec(),
                r#type: tract_onnx::pb::attribute_proto::AttributeType::Ints as i32,
                ..Default::default()
            };
            let floats = |name: &str, v: &[f32]| tract_onnx::pb::AttributeProto {
                name: name.into(),
                floats: v.to_vec(),
                r#type: tract_onnx::pb::attribute_proto::AttributeType::Floats as i32,
                ..Default::default()
            };
            node.attribute.extend([
                ints("nodes_treeids", &[0, 0, 0]),
                ints("nodes_nodeids", &[0, 1, 2]),
                ints("nodes_featureids", &[0, 1, 0]),
                floats("nodes_values", &[0.0, 0.0, 0.0]),
                ints("nodes_truenodeids", &yes),
                ints("nodes_falsenodeids", &no),
                tract_onnx::pb::AttributeProto {
                    name: "nodes_modes".into(),
                    strings: vec![
                        b"BRANCH_LEQ".to_vec(),
                        b"BRANCH_LEQ".to_vec(),
                        b"LEAF".to_vec(),
                    ],
                    r#type: tract_onnx::pb::attribute_proto::AttributeType::Strings as i32,
                    ..Default::default()
                },
                ints("target_treeids", &[0]),
                ints("target_nodeids", &[2]),
                ints("target_ids", &[0]),
                floats("target_weights", &[1.0]),
            ]);
        })
    };
    // Two edges to one node (LightGBM's category splits do this; onnxruntime accepts it).
    let ok = tiny([1, 2, 0], [2, 2, 0]);
    assert_eq!(ok, "loaded");
    // Node 1's "no" edge back to itself, nothing orphaned: a cycle.
    let err = tiny([1, 2, 0], [2, 1, 0]);
    assert!(err.contains("cycle"), "{err}");
    // The root branching to itself: its old child becomes the only root, and the leaves
    // under the root's other side are no longer reachable.
    let err = load_edited("gbr", |p| {
        attr(p, "TreeEnsembleRegressor", "nodes_truenodeids").ints[0] = 0;
    });
    assert!(err.contains("not a reachable leaf"), "{err}");
    let err = load_edited("gbr", |p| {
        attr(p, "TreeEnsembleRegressor", "nodes_falsenodeids").ints[0] = 9999;
    });
    assert!(
        err.contains("9999") && err.contains("does not exist"),
        "{err}"
    );
    let err = load_edited("rf_multi", |p| {
        attr(p, "TreeEnsembleClassifier", "class_ids").ints[0] = 7;
    });
    assert!(
        err.contains("class 7") && err.contains("there are 3"),
        "{err}"
    );
    // A feature beyond the declared input width.
    let err = load_edited("gbr", |p| {
        attr(p, "TreeEnsembleRegressor", "nodes_featureids").ints[0] = 50;
    });
    assert!(
        err.contains("feature 50") && err.contains("8 columns"),
        "{err}"
    );
    let err = load_edited("gbr", |p| {
        attr(p, "TreeEnsembleRegressor", "nodes_values")
            .floats
            .pop();
    });
    assert!(err.contains("nodes_values"), "{err}");
    let err = load_edited("gbr", |p| {
        attr(p, "TreeEnsembleRegressor", "nodes_modes").strings[0] = b"BRANCH_SOMETIMES".to_vec();
    });
    assert!(err.contains("BRANCH_SOMETIMES"), "{err}");
}

#[test]
fn string_labels_and_unknown_transforms_are_refused_with_a_reason() {
    let err = load_edited("rf_multi", |p| {
        let a = attr(p, "TreeEnsembleClassifier", "classlabels_int64s");
        a.name = "classlabels_strings".into();
        a.strings = a.ints.iter().map(|i| i.to_string().into_bytes()).collect();
        a.ints.clear();
        a.r#type = tract_onnx::pb::attribute_proto::AttributeType::Strings as i32;
    });
    assert!(err.contains("string class labels"), "{err}");
    let err = load_edited("gbc_multi", |p| {
        attr(p, "TreeEnsembleClassifier", "post_transform").s = b"PROBIT".to_vec();
    });
    assert!(
        err.contains("post_transform PROBIT is not supported"),
        "{err}"
    );
}

#[test]
fn a_manifest_that_mistypes_an_output_is_refused() {
    let all = fixtures::load().expect("fixtures load");
    let f = all.iter().find(|f| f.name == "rf_binary").expect("fixture");
    let mut manifest = f.manifest().expect("manifest");
    let label = manifest
        .outputs
        .iter_mut()
        .find(|o| o.name == "output_label")
        .expect("label output");
    label.datatype = edgefleet_common::DataType::Fp32;
    let err = LoadedModel::load(manifest, &f.path)
        .expect_err("must fail")
        .to_string();
    assert!(
        err.contains("output \"output_label\" as FP32") && err.contains("INT64"),
        "{err}"
    );
}

#[test]
fn bad_inputs_at_inference_are_errors_not_panics() {
    let all = fixtures::load().expect("fixtures load");
    let f = all
        .iter()
        .find(|f| f.name == "binarizer_ridge")
        .expect("fixture");
    let model = LoadedModel::load(f.manifest().expect("manifest"), &f.path).expect("load");
    let mut row = f.row(0);
    if let TensorData::Fp32(v) = &mut row.data {
        v[0] = f32::NAN;
    }
    let err = model.infer(&[row], &[]).expect_err("must fail");
    assert!(err.contains("NaN"), "{err}");
    // Wrong width never reaches a kernel: the schema check names the expected shape.
    let f = all.iter().find(|f| f.name == "gbr").expect("fixture");
    let model = LoadedModel::load(f.manifest().expect("manifest"), &f.path).expect("load");
    let narrow = Tensor {
        name: f.input.name.clone(),
        shape: vec![1, 3],
        data: TensorData::Fp32(vec![1.0; 3]),
    };
    let err = model.infer(&[narrow], &[]).expect_err("must fail");
    assert!(err.contains("shape"), "{err}");
}

#[test]
fn a_truncated_model_file_is_a_load_error() {
    let all = fixtures::load().expect("fixtures load");
    let f = all.iter().find(|f| f.name == "gbr").expect("fixture");
    let bytes = std::fs::read(&f.path).expect("read");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cut.onnx");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
    let err = LoadedModel::load(f.manifest().expect("manifest"), &path)
        .expect_err("must fail")
        .to_string();
    assert!(err.contains("ONNX"), "{err}");
}

/// A scikit-learn classifier export (TreeEnsembleClassifier + ZipMap) pushed through the real
/// hub, pulled, smoke-tested and served by a real agent: the OIP metadata shows the real
/// schema and the answers are onnxruntime's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classifier_export_is_served_end_to_end_with_its_real_schema() {
    use serde_json::{Value, json};
    use support::*;
    let all = fixtures::load().expect("fixtures load");
    let f = all.iter().find(|f| f.name == "rf_binary").expect("fixture");
    let bytes = std::fs::read(&f.path).expect("read");
    let mut manifest = f.manifest().expect("manifest");
    manifest.created_at = now();
    // The smoke test is onnxruntime's answer on the first probe row.
    let expected = f
        .outputs
        .iter()
        .map(|t| {
            let w: u64 = t.shape[1..].iter().product();
            let take = |n: usize| match &t.data {
                TensorData::Int64(v) => TensorData::Int64(v[..n].to_vec()),
                TensorData::Fp32(v) => TensorData::Fp32(v[..n].to_vec()),
                other => other.clone(),
            };
            Tensor {
                name: t.name.clone(),
                shape: std::iter::once(1)
                    .chain(t.shape[1..].iter().copied())
                    .collect(),
                data: take(w as usize),
            }
        })
        .collect();
    manifest.smoke_tests = vec![edgefleet_common::SmokeTest {
        inputs: vec![f.row(0)],
        expected,
        tolerance: 1e-5,
    }];
    let hub = Hub::start().await;
    hub.push(&manifest, &bytes).await;
    hub.assign("shop-1", &manifest.name, 1).await;
    let agent = Agent::start(&hub, "shop-1").await;
    let http = client();
    let url = format!("{}/v2/models/{}", agent.url, manifest.name);
    let meta: Value = eventually("model served", || async {
        let r = http.get(&url).send().await.ok()?;
        r.status().is_success().then_some(())?;
        r.json().await.ok()
    })
    .await;
    assert_eq!(
        meta["inputs"],
        json!([{"name": "input", "datatype": "FP32", "shape": [-1, 8]}])
    );
    let outputs = meta["outputs"].as_array().expect("outputs");
    assert!(
        outputs.contains(&json!({"name": "output_label", "datatype": "INT64", "shape": [-1]})),
        "{meta}"
    );
    assert!(
        outputs
            .contains(&json!({"name": "output_probability", "datatype": "FP32", "shape": [-1, 2]})),
        "{meta}"
    );

    let TensorData::Fp32(data) = &f.input.data else {
        panic!("fp32 input")
    };
    let body = json!({"inputs": [{"name": "input", "shape": f.input.shape, "datatype": "FP32", "data": data}]});
    let r: Value = http
        .post(format!("{url}/infer"))
        .json(&body)
        .send()
        .await
        .expect("infer")
        .json()
        .await
        .expect("json");
    let label = r["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|t| t["name"] == "output_label"))
        .expect("label output");
    let want = f
        .outputs
        .iter()
        .find(|t| t.name == "output_label")
        .expect("label");
    let TensorData::Int64(want) = &want.data else {
        panic!("int64 labels")
    };
    assert_eq!(label["datatype"], "INT64");
    let got: Vec<i64> = label["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|v| v.as_i64().expect("int"))
        .collect();
    assert_eq!(&got, want, "labels differ from onnxruntime's");
    assert!(
        want.contains(&1) && want.contains(&0),
        "probe rows cover both classes"
    );
}
