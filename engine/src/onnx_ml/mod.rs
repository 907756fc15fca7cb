//! The ONNX-ML operators (`ai.onnx.ml`) that scikit-learn (skl2onnx), XGBoost and LightGBM
//! (onnxmltools) exports use, registered over tract-onnx's own operator set.
//!
//! tract-onnx 0.23 lacks `Scaler`, `TreeEnsembleRegressor`, `Imputer`, `Binarizer`,
//! `OneHotEncoder`, `LabelEncoder`, `ArrayFeatureExtractor` and `ZipMap`, and its
//! `TreeEnsembleClassifier` labels every row of a binary model as the first class. Each
//! operator here is one [`kernel::Kernel`]: attributes parsed and validated once at load, an
//! `eval` that follows onnxruntime's semantics (the reference the models were validated
//! with), checked against onnxruntime's outputs on the fixtures in `tests/fixtures/onnx_ml`.
//!
//! [`check_supported`] runs before tract sees the graph: an operator nobody implements, or one
//! from a domain we do not know, is a load-time error naming the operator and the node —
//! never a model that loads and answers wrongly.

mod encode;
mod kernel;
mod transform;
mod tree;

use tract_onnx::model::OnnxOpRegister;
use tract_onnx::pb::{ModelProto, NodeProto};

use kernel::node;

/// tract's ONNX framework with our ONNX-ML operators registered (ours replace tract's where
/// both exist).
pub fn onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    register(&mut onnx.op_register);
    onnx
}

fn register(reg: &mut OnnxOpRegister) {
    reg.insert("Scaler", |_, n| Ok((node(transform::scaler(n)?), vec![])));
    reg.insert("Imputer", |_, n| Ok((node(transform::imputer(n)?), vec![])));
    reg.insert("Binarizer", |_, n| {
        Ok((node(transform::binarizer(n)?), vec![]))
    });
    reg.insert("Normalizer", |_, n| {
        Ok((node(transform::normalizer(n)?), vec![]))
    });
    reg.insert("TreeEnsembleRegressor", |_, n| {
        Ok((node(tree::regressor(n)?), vec![]))
    });
    reg.insert("TreeEnsembleClassifier", |_, n| {
        Ok((node(tree::classifier(n)?), vec![]))
    });
    reg.insert("OneHotEncoder", |_, n| {
        Ok((node(encode::one_hot_encoder(n)?), vec![]))
    });
    reg.insert("LabelEncoder", |_, n| {
        Ok((node(encode::label_encoder(n)?), vec![]))
    });
    reg.insert("ArrayFeatureExtractor", |_, _| {
        Ok((node(encode::ArrayFeatureExtractor), vec![]))
    });
    reg.insert("ZipMap", |_, n| Ok((node(encode::zip_map(n)?), vec![])));
}

/// Operator domains whose operators are looked up by name in the register.
const KNOWN_DOMAINS: &[&str] = &["", "ai.onnx", "ai.onnx.ml"];

/// The first node (in graph order, subgraphs included) whose operator cannot be served, as a
/// message naming the operator and the node.
pub fn check_supported(onnx: &tract_onnx::Onnx, model: &ModelProto) -> Result<(), String> {
    match model.graph.as_ref() {
        Some(graph) => check_nodes(onnx, &graph.node),
        None => Err("the file holds no graph".into()),
    }
}

fn check_nodes(onnx: &tract_onnx::Onnx, nodes: &[NodeProto]) -> Result<(), String> {
    for n in nodes {
        let domain = if n.domain.is_empty() {
            "ai.onnx"
        } else {
            n.domain.as_str()
        };
        if !KNOWN_DOMAINS.contains(&n.domain.as_str()) {
            return Err(format!(
                "operator {domain}:{} (node {:?}) is from a domain this agent does not serve",
                n.op_type, n.name
            ));
        }
        if !onnx.op_register.0.contains_key(&n.op_type) {
            return Err(format!(
                "operator {domain}:{} (node {:?}) is not supported by this agent",
                n.op_type, n.name
            ));
        }
        for a in &n.attribute {
            for g in a.g.iter().chain(&a.graphs) {
                check_nodes(onnx, &g.node)?;
            }
        }
    }
    Ok(())
}
