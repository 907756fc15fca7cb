#!/usr/bin/env python3
"""An Edgefleet trainer in Python: scikit-learn fits, skl2onnx exports, under the same contract
as the reference trainer `edgefleet-train` (docs/trainers.md).

    python train.py JOB_DIR

JOB_DIR holds dataset.csv, dataset.schema.json, params.json and parent/manifest.json (the
model being replaced); this writes JOB_DIR/model.onnx (the parent's input and output tensors,
missing values imputed inside the model) and JOB_DIR/metrics.json. Exit status 0 means
model.onnx is complete.

params.json takes the reference trainer's keys with its defaults and meanings: {"model":
"ridge" | "gbt" (default ridge), "target": the truth column (default: the first `truth`
column), "seed": 0, "validation": 0.2 (the newest share kept out of fitting and scored in
metrics.json, [0, 0.9]), "alpha": 0.001 (ridge: the L2 penalty on standardised coefficients
against the mean squared error), "iterations": 100, "learning_rate": 0.1, "max_depth": 5}.
Unknown keys and values out of range are refused, all at once.

To use it, point the hub at it (hub.toml):
    trainer_command = ["/opt/venv/bin/python", "/opt/edgefleet/train.py"]
"""

import csv
import json
import math
import os
import sys

# One thread for every numeric library: a sum must not depend on how many cores the machine has
# (the hub gives trainers an environment of PATH, HOME and LANG only).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402
from onnx import helper
from skl2onnx import convert_sklearn  # noqa: E402
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

DEFAULTS = {"model": "ridge", "target": None, "seed": 0, "validation": 0.2, "alpha": 0.001,
            "iterations": 100, "learning_rate": 0.1, "max_depth": 5}

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


def check_params(given):
    """The params with their defaults; every problem at once."""
    if not isinstance(given, dict):
        fail("params.json must be a JSON object")
    problems = [f"unknown parameter {k!r}" for k in sorted(given) if k not in DEFAULTS]
    p = {**DEFAULTS, **given}
    if p["model"] not in ("ridge", "gbt"):
        problems.append(f"model {p['model']!r}: ridge or gbt")
    checks = [("seed", int, 0, 2**64 - 1), ("validation", float, 0.0, 0.9),
              ("alpha", float, 0.0, 1e12), ("iterations", int, 1, 100_000),
              ("learning_rate", float, 1e-6, 10.0), ("max_depth", int, 1, 32)]
    for key, kind, lo, hi in checks:
        v = p[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)) \
                or not (lo <= v <= hi):
            problems.append(f"{key} {v!r} must be {kind.__name__} in [{lo}, {hi}]")
    if problems:
        fail("; ".join(problems))
    return p


def tensor_type(spec, what):
    """A skl2onnx type for a parent tensor: FP32 [-1, n] or, for the output, [-1]."""
    shape = spec.get("shape", [])
    if spec.get("datatype") != "FP32" or not shape or shape[0] != -1:
        fail(f"{what} {spec.get('name')!r} is {spec.get('datatype')} {shape}: FP32 [-1, …] only")
    return FloatTensorType([None] + list(shape[1:]))


def read_job(job):
    with open(os.path.join(job, "params.json")) as f:
        params = check_params(json.load(f))
    with open(os.path.join(job, "parent", "manifest.json")) as f:
        parent = json.load(f)
    inputs, outputs = parent.get("inputs", []), parent.get("outputs", [])
    if len(inputs) != 1 or not outputs:
        fail("the parent must have one input [batch, features] and an output")
    features = inputs[0].get("feature_names") or []
    if not features:
        fail(f"input {inputs[0].get('name')!r} has no feature_names to find the columns by")
    target = params["target"] or "truth_" + outputs[0]["name"]
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


def model(params, rows):
    # An all-missing column stays (as its fill value): the model keeps the parent's width.
    impute = ("impute", SimpleImputer(strategy="median", keep_empty_features=True))
    if params["model"] == "gbt":
        fit = GradientBoostingRegressor(
            n_estimators=int(params["iterations"]),
            max_depth=int(params["max_depth"]),
            learning_rate=float(params["learning_rate"]),
            random_state=int(params["seed"]),
        )
        return Pipeline([impute, ("fit", fit)])
    # The reference trainer's alpha weighs the penalty against the *mean* squared error on
    # standardised features; scikit-learn's against the sum: scale it by the rows.
    fit = Ridge(alpha=float(params["alpha"]) * max(rows, 1))
    return Pipeline([impute, ("scale", StandardScaler()), ("fit", fit)])


def scores(pipeline, x, y):
    p = pipeline.predict(x)
    return {"rows": int(len(y)), "mae": float(np.mean(np.abs(p - y))),
            "rmse": float(math.sqrt(np.mean((p - y) ** 2)))}


def main():
    if len(sys.argv) < 2:
        fail("usage: train.py JOB_DIR")
    job = sys.argv[-1]
    params, parent, x, y = read_job(job)
    held = int(math.floor(len(y) * float(params["validation"])))
    cut = len(y) - held
    pipeline = model(params, cut).fit(x[:cut], y[:cut])
    metrics = {"train": scores(pipeline, x[:cut], y[:cut]), "trainer": "examples/sklearn-trainer"}
    if held:
        metrics["validation"] = scores(pipeline, x[cut:], y[cut:])
    inp, out = parent["inputs"][0], parent["outputs"][0]
    onx = convert_sklearn(
        pipeline,
        initial_types=[(inp["name"], tensor_type(inp, "input"))],
        final_types=[(out["name"], tensor_type(out, "output"))],
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
    print(f"trained {params['model']} on {cut} rows; {metrics}")


if __name__ == "__main__":
    main()
