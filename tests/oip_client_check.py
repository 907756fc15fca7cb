"""The Triton/KServe Python HTTP client, unchanged, against a running Edgefleet agent.

Run by tests/oip_client_check.sh inside the quick start (EDGEFLEET_DEMO_THEN), which has a
hub and an agent serving the demand model; needs `tritonclient[http]`
(tests/requirements-oip.txt). It also signs, pushes and assigns two ONNX-ML fixtures: an FP32
regressor (gbr) and a classifier with an INT64 label output (rf_binary).

Every model is called three times with the same rows: with the client's defaults (binary
tensors in and out, the Binary Tensor Data Extension), once with no outputs named and once
naming them with `InferRequestedOutput(name)` (binary per output, no request-level flag), and
with JSON (`binary_data=False`). Every answer
must equal the model's expected outputs: the demand model's smoke test, and onnxruntime's
outputs for the fixtures (labels exactly, numbers within 1e-5 relative). Exits non-zero on
any mismatch.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

addr = os.environ["EDGEFLEET_DEMO_AGENT_ADDR"]
demo = os.environ["EDGEFLEET_DEMO_DIR"]
bin_dir = os.environ["EDGEFLEET_DEMO_BIN"]
repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
client = httpclient.InferenceServerClient(url=addr)

NP = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_}


def ef(*args):
    subprocess.run([os.path.join(bin_dir, "edgefleet"), *args], check=True, stdout=subprocess.DEVNULL)


def infer_both_ways(model, inputs, output_names):
    """Calls `model` with the client's defaults (binary) and with JSON; returns both results."""
    results = {}
    for mode, binary in (("binary", True), ("named", True), ("json", False)):
        tensors = []
        for name, datatype, array in inputs:
            t = httpclient.InferInput(name, list(array.shape), datatype)
            if binary:
                t.set_data_from_numpy(array)  # the default: binary_data=True
            else:
                t.set_data_from_numpy(array, binary_data=False)
            tensors.append(t)
        if mode == "binary":
            # The client's default call: no outputs named, so the request asks for every
            # output in binary with its request-level `binary_data_output`.
            result = client.infer(model, tensors, request_id=f"{model}-{mode}")
            for o in result.get_response()["outputs"]:
                assert "binary_data_size" in o.get("parameters", {}), (mode, o)
                assert "data" not in o, (mode, o)
        elif mode == "named":
            # The outputs named with the client's default (binary_data=True): each output
            # asks for binary itself, and the request-level flag is not sent.
            outs = [httpclient.InferRequestedOutput(n) for n in output_names]
            body, json_size = httpclient.InferenceServerClient.generate_request_body(
                tensors, outputs=outs, request_id=f"{model}-{mode}")
            header = json.loads(body[:json_size])
            assert "binary_data_output" not in header.get("parameters", {}), header
            assert all(o["parameters"]["binary_data"] is True for o in header["outputs"]), header
            result = client.infer(model, tensors, outputs=outs, request_id=f"{model}-{mode}")
            outputs = result.get_response()["outputs"]
            assert sorted(o["name"] for o in outputs) == sorted(output_names), (mode, outputs)
            for o in outputs:
                assert "binary_data_size" in o.get("parameters", {}), (mode, o)
                assert "data" not in o, (mode, o)
        else:
            outs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in output_names]
            result = client.infer(model, tensors, outputs=outs, request_id=f"{model}-{mode}")
            for o in result.get_response()["outputs"]:
                assert "data" in o, (mode, o)
        assert result.get_response()["id"] == f"{model}-{mode}", result.get_response()
        results[mode] = {n: result.as_numpy(n) for n in output_names}
    return results


def check(model, got, expected, exact):
    """`expected`: name -> (datatype, shape, values)."""
    for mode, outputs in got.items():
        for name, (datatype, shape, values) in expected.items():
            y = outputs[name]
            want = np.array(values, dtype=NP[datatype]).reshape(shape)
            assert y is not None, f"{model} {mode}: no output {name}"
            assert y.dtype == want.dtype, f"{model} {mode} {name}: dtype {y.dtype}, expected {want.dtype}"
            assert y.shape == want.shape, f"{model} {mode} {name}: shape {y.shape}, expected {want.shape}"
            if exact or datatype in ("INT64", "INT32", "BOOL"):
                assert np.array_equal(y, want), f"{model} {mode} {name}: {y.ravel()[:8]} != {want.ravel()[:8]}"
            else:
                assert np.allclose(y, want, rtol=1e-5, atol=1e-6), (
                    f"{model} {mode} {name}: max diff {np.max(np.abs(y - want))}")
        print(f"  {model}: {mode:6} answers equal the expected outputs ({', '.join(expected)})")


assert client.is_server_live(), "server not live"
assert client.is_server_ready(), "server not ready"
meta = client.get_server_metadata()
assert meta["name"] == "edgefleet-agent", meta
assert "binary_tensor_data" in meta["extensions"], meta
assert client.is_model_ready("demand"), "model not ready"
assert client.is_model_ready("demand", "1"), "model version 1 not ready"
model = client.get_model_metadata("demand")
assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}], model
assert model["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}], model

# 1. The demand MLP against its own smoke test (expected outputs computed in plain Rust).
with open(os.path.join(demo, "model", "spec.json")) as f:
    smoke = json.load(f)["smoke_tests"][0]
x_in = smoke["inputs"][0]
x = np.array(x_in["data"], dtype=np.float32).reshape(x_in["shape"])
y_exp = smoke["expected"][0]
got = infer_both_ways("demand", [("x", "FP32", x)], ["y"])
for mode in got:
    assert np.allclose(got[mode]["y"], np.array(y_exp["data"], dtype=np.float32).reshape(y_exp["shape"]),
                       atol=smoke["tolerance"]), (mode, got[mode]["y"].ravel())
    print(f"  demand: {mode:6} answers equal the smoke test's expected outputs")
assert np.array_equal(got["binary"]["y"], got["json"]["y"]), "binary and JSON answers differ"
assert np.array_equal(got["binary"]["y"], got["named"]["y"]), "binary answers differ with the outputs named"

# The versioned path, a mixed call (binary in, JSON out), and a refused request with the
# protocol's error shape.
inp = httpclient.InferInput("x", list(x.shape), "FP32")
inp.set_data_from_numpy(x)
again = client.infer("demand", [inp], model_version="1",
                     outputs=[httpclient.InferRequestedOutput("y", binary_data=False)])
assert np.array_equal(again.as_numpy("y"), got["json"]["y"])
bad = httpclient.InferInput("x", [1, 7], "FP32")
bad.set_data_from_numpy(np.zeros((1, 7), dtype=np.float32))
try:
    client.infer("demand", [bad])
    sys.exit("a wrong shape was accepted")
except InferenceServerException as e:
    assert "shape" in str(e), str(e)

# 2. Two ONNX-ML fixtures: sign (root key, offline), push, assign, then call both ways.
with open(os.path.join(repo, "tests", "fixtures", "onnx_ml", "expected.json")) as f:
    fixtures = json.load(f)["fixtures"]


def tensor_spec(name, t):
    return {"name": name, "datatype": t["datatype"], "shape": [-1] + t["shape"][1:]}


def first_row(name, t):
    width = int(np.prod(t["shape"][1:]))
    return {"name": name, "shape": [1] + t["shape"][1:], "datatype": t["datatype"], "data": t["data"][:width]}


def deploy(fixture, model_name):
    fx = fixtures[fixture]
    inp = fx["input"]
    spec = {
        "name": model_name,
        "version": 1,
        "description": fx["note"],
        "inputs": [tensor_spec(inp["name"], inp)],
        "outputs": [tensor_spec(n, t) for n, t in fx["outputs"].items()],
        # The spec's smoke test in the request form: the fixture's first row.
        "smoke_tests": [{
            "inputs": [first_row(inp["name"], inp)],
            "expected": [first_row(n, t) for n, t in fx["outputs"].items()],
            "tolerance": 1e-4,
        }],
    }
    d = os.path.join(demo, model_name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "spec.json"), "w") as f:
        json.dump(spec, f)
    onnx = os.path.join(repo, "tests", "fixtures", "onnx_ml", f"{fixture}.onnx")
    ef("sign", "--key", os.path.join(demo, "keys", "root.key"), "--spec", os.path.join(d, "spec.json"),
       "--model", onnx, "--out", os.path.join(d, "manifest"))
    ef("push", os.path.join(d, "manifest"), onnx)
    ef("assign", "--device", "shop-1", model_name, "1")
    return fx


regressor = deploy("gbr", "regressor")
classifier = deploy("rf_binary", "classifier")
deadline = time.time() + 60
while not (client.is_model_ready("regressor") and client.is_model_ready("classifier")):
    assert time.time() < deadline, "the fixtures were not served within 60 s"
    time.sleep(0.1)

for model_name, fx in (("regressor", regressor), ("classifier", classifier)):
    inp = fx["input"]
    x = np.array(inp["data"], dtype=NP[inp["datatype"]]).reshape(inp["shape"])
    names = list(fx["outputs"])
    got = infer_both_ways(model_name, [(inp["name"], inp["datatype"], x)], names)
    check(model_name, got,
          {n: (t["datatype"], t["shape"], t["data"]) for n, t in fx["outputs"].items()}, exact=False)
    for n in names:
        for mode in ("named", "json"):
            assert np.array_equal(got["binary"][n], got[mode][n]), f"{model_name} {n}: binary and {mode} differ"

print(f"tritonclient OK against {addr}: demand, regressor (FP32), classifier (INT64 labels + "
      f"FP32 probabilities), each with the client's binary defaults (outputs unnamed and named) "
      f"and with JSON")
