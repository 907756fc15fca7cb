#!/usr/bin/env python3
"""Makes one model for both servers of tools/mlserver/compare.sh: the Edgefleet agent and
Seldon MLServer serve the same scikit-learn GradientBoostingRegressor, so that what differs
between them is the server, not the model.

    make_model.py --out DIR

writes

    DIR/mlserver/gbr/model.joblib          the fitted estimator, as MLServer's SKLearn runtime loads it
    DIR/mlserver/gbr/model-settings.json   MLServer's model settings (mlserver_sklearn.SKLearnModel)
    DIR/agent/model.onnx                   skl2onnx's export of the same estimator, float input [None, 8]
    DIR/agent/spec.json                    the spec `edgefleet sign --spec` reads (model gbr, version 1)
    DIR/batch1.json, DIR/batch64.json      OIP v2 JSON request bodies, 1 and 64 rows of 8 FP32,
                                           posted unchanged to both servers

MLServer's server-wide settings.json (ports, workers) is written by the benchmark script at run
time, because the ports are only chosen then.

Everything is seeded: the same pinned packages (tools/mlserver/requirements.txt) give the same
model and the same request bodies.
"""

import argparse
import json
import os

import joblib
import numpy as np
from sklearn.ensemble import GradientBoostingRegressor
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType

NAME = "gbr"  # the same model name on both servers, so both URLs are /v2/models/gbr/infer
VERSION = 1
N_FEATURES = 8
INPUT = "x"  # MLServer's SKLearn runtime ignores input names; the agent checks them
FEATURES = [f"f{i}" for i in range(N_FEATURES)]


def synthetic(seed, n):
    """Rows of 8 features and a target that needs trees (interactions, thresholds, a sine).

    The target stays well away from zero (about 20..180), so a relative comparison of the two
    servers' answers is meaningful for every row."""
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [
            rng.uniform(0, 1, n),
            rng.uniform(0, 1, n),
            rng.normal(0, 1, n),
            rng.normal(5, 2, n),
            rng.integers(0, 7, n),  # a small integer feature, like a day of week
            rng.integers(0, 2, n),  # a flag
            rng.lognormal(3, 0.5, n),
            rng.uniform(-1, 1, n),
        ]
    ).astype(np.float32)
    y = (
        100
        + 25 * np.sin(np.pi * x[:, 0] * x[:, 1])
        + 12 * (x[:, 2] > 0.5)
        + 3 * x[:, 3]
        - 4 * (x[:, 4] >= 5)
        + 15 * x[:, 5] * x[:, 7]
        + 0.3 * np.minimum(x[:, 6], 60)
        + rng.normal(0, 2, n)
    ).astype(np.float32)
    return x, y


def f32_list(a):
    """Shortest decimal text that reads back as the same float32, so the JSON bodies carry
    exactly the float32 values both servers decode (and stay short)."""
    return [float(np.format_float_positional(np.float32(v), unique=True, trim="-")) for v in np.ravel(a)]


def oip_body(rows):
    return {"inputs": [{"name": INPUT, "shape": list(rows.shape), "datatype": "FP32", "data": f32_list(rows)}]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    x, y = synthetic(args.seed, 4000)
    model = GradientBoostingRegressor(n_estimators=100, max_depth=4, random_state=0).fit(x, y)

    # MLServer: model.joblib plus model-settings.json in a folder of the model repository.
    ml_dir = os.path.join(args.out, "mlserver", NAME)
    os.makedirs(ml_dir, exist_ok=True)
    joblib.dump(model, os.path.join(ml_dir, "model.joblib"))
    with open(os.path.join(ml_dir, "model-settings.json"), "w") as f:
        json.dump(
            {
                "name": NAME,
                "implementation": "mlserver_sklearn.SKLearnModel",
                # No adaptive batching (max_batch_size stays 0, the default): the agent does
                # not batch requests either, so each request is one predict() on each side.
                "parameters": {"uri": "./model.joblib", "version": str(VERSION)},
            },
            f,
            indent=2,
        )
        f.write("\n")

    # The agent: the skl2onnx export, with the same opsets as tools/fixtures/generate.py.
    onx = to_onnx(
        model,
        initial_types=[(INPUT, FloatTensorType([None, N_FEATURES]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    outputs = [(o.name, o.type.tensor_type.elem_type) for o in onx.graph.output]
    assert len(outputs) == 1 and outputs[0][1] == 1, f"expected one FLOAT output, got {outputs}"
    out_name = outputs[0][0]
    agent_dir = os.path.join(args.out, "agent")
    os.makedirs(agent_dir, exist_ok=True)
    with open(os.path.join(agent_dir, "model.onnx"), "wb") as f:
        f.write(onx.SerializeToString())

    # Held-out rows (another seed) for the smoke test and the request bodies.
    probe, _ = synthetic(args.seed + 1, 65)
    smoke_row = probe[:1]
    # The ONNX trees add 100 float32 leaf values where scikit-learn adds float64 ones; on
    # targets near 100 the two differ by ~1e-5, so an absolute tolerance of 1e-2 is still
    # strict (one leaf of the last trees is worth ~0.1).
    expected = model.predict(smoke_row).astype(np.float32)
    spec = {
        "name": NAME,
        "version": VERSION,
        "description": "GradientBoostingRegressor, 100 trees of depth 4, 8 features "
        "(tools/mlserver/make_model.py; the MLServer comparison)",
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, N_FEATURES], "feature_names": FEATURES}],
        "outputs": [{"name": out_name, "datatype": "FP32", "shape": [-1, 1]}],
        "smoke_tests": [
            {
                "inputs": [{"name": INPUT, "shape": [1, N_FEATURES], "datatype": "FP32", "data": f32_list(smoke_row)}],
                "expected": [{"name": out_name, "shape": [1, 1], "datatype": "FP32", "data": f32_list(expected)}],
                "tolerance": 1e-2,
            }
        ],
        "lineage": {
            "parent_version": None,
            "code_revision": "tools/mlserver/make_model.py",
            # The manifest's params are strings, its metrics numbers.
            "params": {"n_estimators": "100", "max_depth": "4", "seed": str(args.seed)},
            "metrics": {"train_r2": round(float(model.score(x, y)), 4)},
        },
    }
    with open(os.path.join(agent_dir, "spec.json"), "w") as f:
        json.dump(spec, f, indent=1)
        f.write("\n")

    # The request bodies: row 0 alone, and rows 1..64.
    for name, rows in (("batch1", probe[:1]), ("batch64", probe[1:65])):
        with open(os.path.join(args.out, name + ".json"), "w") as f:
            json.dump(oip_body(rows), f, separators=(",", ":"))
    print(f"{NAME}: 100 trees, depth 4, train R^2 {model.score(x, y):.3f}; ONNX output {out_name!r}; in {args.out}")


if __name__ == "__main__":
    main()
