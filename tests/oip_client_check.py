"""The Triton/KServe Python HTTP client, unchanged, against a running Edgefleet agent.

Run by tests/oip_client_check.sh (which starts the quick-start hub and agent); needs
`tritonclient[http]` (tests/requirements-oip.txt). Exits non-zero on any mismatch.
"""
import os
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

addr = os.environ["EDGEFLEET_AGENT_ADDR"]
client = httpclient.InferenceServerClient(url=addr)

assert client.is_server_live(), "server not live"
assert client.is_server_ready(), "server not ready"
meta = client.get_server_metadata()
assert meta["name"] == "edgefleet-agent", meta
assert client.is_model_ready("demand"), "model not ready"
assert client.is_model_ready("demand", "1"), "model version 1 not ready"
model = client.get_model_metadata("demand")
assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}], model
assert model["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}], model

x = np.array([[1.9, 12.5, 4, 18, 0, 0, 120, 115], [2.4, 13.0, 5, 18, 1, 0, 130, 118]], dtype=np.float32)
inp = httpclient.InferInput("x", list(x.shape), "FP32")
inp.set_data_from_numpy(x, binary_data=False)
out = httpclient.InferRequestedOutput("y", binary_data=False)
result = client.infer("demand", [inp], outputs=[out], request_id="triton-client-1")
y = result.as_numpy("y")
assert y.shape == (2, 1) and y.dtype == np.float32, (y.shape, y.dtype)
assert result.get_response()["id"] == "triton-client-1", result.get_response()
assert result.get_response()["model_version"] == "1"

# The same through the versioned path, and a refused request with the protocol's error shape.
again = client.infer("demand", [inp], model_version="1", outputs=[out])
assert np.allclose(again.as_numpy("y"), y)
bad = httpclient.InferInput("x", [1, 7], "FP32")
bad.set_data_from_numpy(np.zeros((1, 7), dtype=np.float32), binary_data=False)
try:
    client.infer("demand", [bad])
    sys.exit("a wrong shape was accepted")
except InferenceServerException as e:
    assert "shape" in str(e), str(e)

print(f"tritonclient {httpclient.__name__} OK against {addr}: y = {y.ravel().tolist()}")
