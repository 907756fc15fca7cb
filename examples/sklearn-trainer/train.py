#!/usr/bin/env python3
"""An Edgefleet trainer in Python: scikit-learn fits, skl2onnx exports, under the same contract
as the reference trainer `edgefleet-train` (docs/trainers.md).

    python train.py JOB_DIR

JOB_DIR holds dataset.csv, dataset.schema.json, params.json and parent/manifest.json (the
model being replaced); this writes JOB_DIR/model.onnx (the parent's input and output tensors,
missing values imputed inside the model) and JOB_DIR/metrics.json. Exit status 0 means
model.onnx is complete.

params.json: {"model": "gbt" | "ridge", "seed": N, "iterations": 100, "max_depth": 3,
"learning_rate": 0.1, "alpha": 1.0, "validation": 0.2}. The newest `validation` share of the
rows is kept out of fitting and scored in metrics.json.

To use it, point the hub at it (hub.toml):
    trainer_command = ["/opt/venv/bin/python", "/opt/edgefleet/train.py"]
"""

import csv
import json
import math
import os
import sys

import numpy as np
from onnx import helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline

# skl2onnx 1.20 passes some INTS attributes as booleans, which onnx 1.23 refuses; the ONNX-ML
# spec says ints (0/1).
_make_attribute = helper.make_attribute


def _bools_as_ints(key, value, *args, **kwargs):
    if isinstance(value, np.ndarray) and value.dtype == np.bool_:
        value = value.astype(np.int64)
    elif isinstance(value, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) for v in value):
        value = [int(v) for v in value]
    return _make_attribute(key, value, *args, **kwargs)


helper.make_attribute = _bools_as_ints


def fail(message):
    print(f"train.py: {message}", file=sys.stderr)
    sys.exit(2)


def read_job(job):
    with open(os.path.join(job, "params.json")) as f:
        params = json.load(f)
    with open(os.path.join(job, "parent", "manifest.json")) as f:
        parent = json.load(f)
    inputs, outputs = parent.get("inputs", []), parent.get("outputs", [])
    if len(inputs) != 1 or not outputs:
        fail("the parent must have one input [batch, features] and an output")
    features = inputs[0].get("feature_names") or []
    if not features:
        fail(f"input {inputs[0].get('name')!r} has no feature_names to find the columns by")
    target = "truth_" + outputs[0]["name"]
    x, y = [], []
    with open(os.path.join(job, "dataset.csv"), newline="") as f:
        for row in csv.DictReader(f):
            try:
                truth = float(row.get(target) or "nan")
            except ValueError:
                continue
            if not math.isfinite(truth):
                continue
            x.append([float(row[c]) if row.get(c) not in (None, "") else math.nan for c in features])
            y.append(truth)
    if len(y) < 2:
        fail(f"{len(y)} rows with a numeric {target}: too few to fit")
    return params, parent, np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float64)


def model(params):
    seed = int(params.get("seed", 0))
    kind = params.get("model", "gbt")
    if kind == "gbt":
        fit = GradientBoostingRegressor(
            n_estimators=int(params.get("iterations", 100)),
            max_depth=int(params.get("max_depth", 3)),
            learning_rate=float(params.get("learning_rate", 0.1)),
            random_state=seed,
        )
    elif kind == "ridge":
        fit = Ridge(alpha=float(params.get("alpha", 1.0)))
    else:
        fail(f"model {kind!r}: gbt or ridge")
    return Pipeline([("impute", SimpleImputer(strategy="median")), ("fit", fit)])


def scores(pipeline, x, y):
    p = pipeline.predict(x)
    return {"rows": int(len(y)), "mae": float(np.mean(np.abs(p - y))),
            "rmse": float(math.sqrt(np.mean((p - y) ** 2)))}


def main():
    if len(sys.argv) < 2:
        fail("usage: train.py JOB_DIR")
    job = sys.argv[-1]
    params, parent, x, y = read_job(job)
    share = float(params.get("validation", 0.2))
    held = int(math.floor(len(y) * share)) if 0 < share < 1 else 0
    cut = len(y) - held
    pipeline = model(params).fit(x[:cut], y[:cut])
    metrics = {"train": scores(pipeline, x[:cut], y[:cut]), "trainer": "examples/sklearn-trainer"}
    if held:
        metrics["validation"] = scores(pipeline, x[cut:], y[cut:])
    inp, out = parent["inputs"][0], parent["outputs"][0]
    onx = convert_sklearn(
        pipeline,
        initial_types=[(inp["name"], FloatTensorType([None, x.shape[1]]))],
        final_types=[(out["name"], FloatTensorType([None, 1]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    # skl2onnx names the graph with a random UUID: a fixed name, so the same inputs give the
    # same bytes.
    onx.graph.name = "edgefleet-sklearn-trainer"
    # ... and lists the opsets in set order, which changes with Python's hash seed: sorted.
    imports = sorted((o.domain, o.version) for o in onx.opset_import)
    del onx.opset_import[:]
    for domain, version in imports:
        onx.opset_import.add(domain=domain, version=version)
    tmp = os.path.join(job, "model.onnx.tmp")
    with open(tmp, "wb") as f:
        f.write(onx.SerializeToString())
    os.replace(tmp, os.path.join(job, "model.onnx"))
    with open(os.path.join(job, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
    print(f"trained {params.get('model', 'gbt')} on {cut} rows; {metrics}")


if __name__ == "__main__":
    main()
