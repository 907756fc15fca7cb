//! ONNX protobufs built with tract's own `pb` types and encoded with prost.

use edgefleet_trainer::onnx::value_info;
use prost::Message;
use tract_onnx::pb::{
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, tensor_proto::DataType,
};

use crate::{FEATURES, HIDDEN, Mlp};

fn f32_tensor(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        float_data: data.to_vec(),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: format!("{op}_{}", outputs[0]),
        op_type: op.into(),
        ..Default::default()
    }
}

fn model(graph: GraphProto) -> Vec<u8> {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        producer_name: "edgefleet-testmodel".into(),
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

/// `y = Gemm(Relu(Gemm(x, W1, b1)), W2, b2)` with a symbolic batch `N`.
pub fn mlp(m: &Mlp, pad_floats: usize) -> Vec<u8> {
    let mut graph = GraphProto {
        name: "demand_mlp".into(),
        node: vec![
            node("Gemm", &["x", "w1", "b1"], &["h"]),
            node("Relu", &["h"], &["hr"]),
            node("Gemm", &["hr", "w2", "b2"], &["y"]),
        ],
        initializer: vec![
            f32_tensor("w1", &[FEATURES as i64, HIDDEN as i64], &m.w1),
            f32_tensor("b1", &[HIDDEN as i64], &m.b1),
            f32_tensor("w2", &[HIDDEN as i64, 1], &m.w2),
            f32_tensor("b2", &[1], &[m.b2]),
        ],
        input: vec![value_info(
            "x",
            DataType::Float,
            &[None, Some(FEATURES as i64)],
        )],
        output: vec![value_info("y", DataType::Float, &[None, Some(1)])],
        ..Default::default()
    };
    if pad_floats > 0 {
        let pad: Vec<f32> = (0..pad_floats).map(|i| i as f32).collect();
        graph
            .initializer
            .push(f32_tensor("pad", &[pad_floats as i64], &pad));
    }
    model(graph)
}

/// A model exercising every served datatype: `a2 = a * 2` (FP64), `b1 = b + 1` (INT64),
/// `c` passed through (INT32), `dn = Not(d)` (BOOL).
pub fn typed() -> Vec<u8> {
    let two = TensorProto {
        name: "two".into(),
        dims: vec![],
        data_type: DataType::Double as i32,
        double_data: vec![2.0],
        ..Default::default()
    };
    let one = TensorProto {
        name: "one".into(),
        dims: vec![],
        data_type: DataType::Int64 as i32,
        int64_data: vec![1],
        ..Default::default()
    };
    let graph = GraphProto {
        name: "typed".into(),
        node: vec![
            node("Mul", &["a", "two"], &["a2"]),
            node("Add", &["b", "one"], &["b1"]),
            node("Identity", &["c"], &["c1"]),
            node("Not", &["d"], &["dn"]),
        ],
        initializer: vec![two, one],
        input: vec![
            value_info("a", DataType::Double, &[None, Some(2)]),
            value_info("b", DataType::Int64, &[None, Some(2)]),
            value_info("c", DataType::Int32, &[None, Some(1)]),
            value_info("d", DataType::Bool, &[None, Some(1)]),
        ],
        output: vec![
            value_info("a2", DataType::Double, &[None, Some(2)]),
            value_info("b1", DataType::Int64, &[None, Some(2)]),
            value_info("c1", DataType::Int32, &[None, Some(1)]),
            value_info("dn", DataType::Bool, &[None, Some(1)]),
        ],
        ..Default::default()
    };
    model(graph)
}

/// `y = Gemm(x, w, b)`: a linear model over `features` inputs (symbolic batch `N`), for
/// benchmarks with wide rows. Weights are deterministic from `seed`.
pub fn linear(features: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    let w: Vec<f32> = (0..features)
        .map(|_| crate::splitmix(&mut s) * 0.1)
        .collect();
    let graph = GraphProto {
        name: "linear".into(),
        node: vec![node("Gemm", &["x", "w", "b"], &["y"])],
        initializer: vec![
            f32_tensor("w", &[features as i64, 1], &w),
            f32_tensor("b", &[1], &[0.5]),
        ],
        input: vec![value_info(
            "x",
            DataType::Float,
            &[None, Some(features as i64)],
        )],
        output: vec![value_info("y", DataType::Float, &[None, Some(1)])],
        ..Default::default()
    };
    model(graph)
}
