//! The fitted model as ONNX, built with tract-onnx's protobuf types (as the test models are)
//! and encoded with prost: the same model gives the same bytes.
//!
//! - ridge: `Imputer` (ai.onnx.ml: a missing value becomes the training mean) → `MatMul` →
//!   `Add`;
//! - trees: `TreeEnsembleRegressor` (ai.onnx.ml), missing values along each split's learned side.
//!
//! A `[batch]` output (the parent's shape) is the `[batch, 1]` result reshaped. A binary
//! classifier's models compute the log-odds of label 1 the same way, then its labels
//! (`Greater` than 0, `Cast` to INT64, `[batch]`) and, when the parent serves them, its
//! probabilities (`Sigmoid`, `[1 − p, p]` by `Concat`).

use prost::Message;
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
    tensor_proto::DataType, tensor_shape_proto, type_proto,
};

use crate::gbt::{Ensemble, Node};
use crate::job::Signature;
use crate::ridge::Linear;

/// The ONNX-ML opset the exported operators are defined in.
const ML_OPSET: i64 = 3;

/// A tensor's name, element type and shape (`None`: the symbolic batch dimension `N`), as a
/// graph's input or output declares it.
pub fn value_info(name: &str, elem: DataType, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            denotation: String::new(),
            value: Some(match d {
                Some(n) => tensor_shape_proto::dimension::Value::DimValue(*n),
                None => tensor_shape_proto::dimension::Value::DimParam("N".into()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            denotation: String::new(),
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

fn floats(name: &str, dims: &[i64], data: Vec<f32>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        float_data: data,
        ..Default::default()
    }
}

fn node(
    op: &str,
    domain: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: format!("{op}_{output}"),
        op_type: op.into(),
        domain: domain.into(),
        attribute,
        ..Default::default()
    }
}

fn attr(name: &str, kind: AttributeType) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: kind as i32,
        ..Default::default()
    }
}

fn attr_floats(name: &str, v: Vec<f32>) -> AttributeProto {
    AttributeProto {
        floats: v,
        ..attr(name, AttributeType::Floats)
    }
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        f: v,
        ..attr(name, AttributeType::Float)
    }
}

fn attr_ints(name: &str, v: Vec<i64>) -> AttributeProto {
    AttributeProto {
        ints: v,
        ..attr(name, AttributeType::Ints)
    }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        i: v,
        ..attr(name, AttributeType::Int)
    }
}

fn attr_string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        s: v.as_bytes().to_vec(),
        ..attr(name, AttributeType::String)
    }
}

fn attr_strings(name: &str, v: Vec<&str>) -> AttributeProto {
    AttributeProto {
        strings: v.into_iter().map(|s| s.as_bytes().to_vec()).collect(),
        ..attr(name, AttributeType::Strings)
    }
}

/// Wraps `nodes` (whose last writes `result`, `[N, 1]`: a regression's prediction, a
/// classifier's log-odds of label 1) into a model of signature `sig`.
fn model(
    sig: &Signature,
    name: &str,
    mut nodes: Vec<NodeProto>,
    mut initializer: Vec<TensorProto>,
    result: &str,
) -> Vec<u8> {
    if sig.flat_output {
        initializer.push(TensorProto {
            name: "flat_shape".into(),
            dims: vec![1],
            data_type: DataType::Int64 as i32,
            int64_data: vec![-1],
            ..Default::default()
        });
    }
    let mut output = Vec::new();
    if let Some(classifier) = &sig.classifier {
        // Label 1 where the log-odds are above 0 (a probability above ½), as the trainer
        // labels; the probabilities are the sigmoid's, [1 − p, p].
        initializer.push(floats("zero", &[1], vec![0.0]));
        nodes.push(node("Greater", "", &[result, "zero"], "positive", vec![]));
        nodes.push(node(
            "Cast",
            "",
            &["positive"],
            "labels",
            vec![attr_int("to", DataType::Int64 as i64)],
        ));
        nodes.push(node(
            "Reshape",
            "",
            &["labels", "flat_shape"],
            &sig.output,
            vec![],
        ));
        output.push(value_info(&sig.output, DataType::Int64, &[None]));
        if let Some(probabilities) = &classifier.probabilities {
            initializer.push(floats("one", &[1], vec![1.0]));
            nodes.push(node("Sigmoid", "", &[result], "p1", vec![]));
            nodes.push(node("Sub", "", &["one", "p1"], "p0", vec![]));
            nodes.push(node(
                "Concat",
                "",
                &["p0", "p1"],
                probabilities,
                vec![attr_int("axis", 1)],
            ));
            output.push(value_info(probabilities, DataType::Float, &[None, Some(2)]));
        }
    } else if sig.flat_output {
        nodes.push(node(
            "Reshape",
            "",
            &[result, "flat_shape"],
            &sig.output,
            vec![],
        ));
        output.push(value_info(&sig.output, DataType::Float, &[None]));
    } else {
        nodes.push(node("Identity", "", &[result], &sig.output, vec![]));
        output.push(value_info(&sig.output, DataType::Float, &[None, Some(1)]));
    }
    let graph = GraphProto {
        name: name.into(),
        node: nodes,
        initializer,
        input: vec![value_info(
            &sig.input,
            DataType::Float,
            &[None, Some(sig.features as i64)],
        )],
        output,
        ..Default::default()
    };
    ModelProto {
        ir_version: 8,
        opset_import: vec![
            OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            },
            OperatorSetIdProto {
                domain: "ai.onnx.ml".into(),
                version: ML_OPSET,
            },
        ],
        producer_name: "edgefleet-train".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

pub fn linear(sig: &Signature, m: &Linear) -> Vec<u8> {
    let f = sig.features as i64;
    let nodes = vec![
        node(
            "Imputer",
            "ai.onnx.ml",
            &[&sig.input],
            "imputed",
            vec![
                attr_floats(
                    "imputed_value_floats",
                    m.means.iter().map(|&v| v as f32).collect(),
                ),
                attr_float("replaced_value_float", f32::NAN),
            ],
        ),
        node("MatMul", "", &["imputed", "weights"], "product", vec![]),
        node("Add", "", &["product", "bias"], "linear", vec![]),
    ];
    let initializer = vec![
        floats(
            "weights",
            &[f, 1],
            m.weights.iter().map(|&v| v as f32).collect(),
        ),
        floats("bias", &[1], vec![m.bias as f32]),
    ];
    model(sig, "ridge", nodes, initializer, "linear")
}

pub fn trees(sig: &Signature, e: &Ensemble) -> Vec<u8> {
    let mut tree_ids = Vec::new();
    let mut node_ids = Vec::new();
    let mut features = Vec::new();
    let mut values = Vec::new();
    let mut modes = Vec::new();
    let mut trues = Vec::new();
    let mut falses = Vec::new();
    let mut missing = Vec::new();
    let (mut t_trees, mut t_nodes, mut t_ids, mut t_weights) = (vec![], vec![], vec![], vec![]);
    for (t, tree) in e.trees.iter().enumerate() {
        for (i, n) in tree.iter().enumerate() {
            tree_ids.push(t as i64);
            node_ids.push(i as i64);
            match n {
                Node::Branch {
                    feature,
                    threshold,
                    left,
                    right,
                    missing_left,
                } => {
                    features.push(*feature as i64);
                    values.push(*threshold);
                    modes.push("BRANCH_LT");
                    trues.push(*left as i64);
                    falses.push(*right as i64);
                    missing.push(i64::from(*missing_left));
                }
                Node::Leaf(w) => {
                    features.push(0);
                    values.push(0.0);
                    modes.push("LEAF");
                    trues.push(0);
                    falses.push(0);
                    missing.push(0);
                    t_trees.push(t as i64);
                    t_nodes.push(i as i64);
                    t_ids.push(0);
                    t_weights.push(*w);
                }
            }
        }
    }
    let attributes = vec![
        attr_string("aggregate_function", "SUM"),
        attr_floats("base_values", vec![e.base]),
        attr_int("n_targets", 1),
        attr_ints("nodes_falsenodeids", falses),
        attr_ints("nodes_featureids", features),
        attr_ints("nodes_missing_value_tracks_true", missing),
        attr_strings("nodes_modes", modes),
        attr_ints("nodes_nodeids", node_ids),
        attr_ints("nodes_treeids", tree_ids),
        attr_ints("nodes_truenodeids", trues),
        attr_floats("nodes_values", values),
        attr_string("post_transform", "NONE"),
        attr_ints("target_ids", t_ids),
        attr_ints("target_nodeids", t_nodes),
        attr_ints("target_treeids", t_trees),
        attr_floats("target_weights", t_weights),
    ];
    let nodes = vec![node(
        "TreeEnsembleRegressor",
        "ai.onnx.ml",
        &[&sig.input],
        "trees",
        attributes,
    )];
    model(sig, "gbt", nodes, vec![], "trees")
}
