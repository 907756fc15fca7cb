"""Sends 2000 OIP infer requests to the agent, then prints its RSS and peak RSS (used by footprint.sh)."""
import json
import os
import urllib.request

addr = os.environ["EDGEFLEET_DEMO_AGENT_ADDR"]
body = json.dumps({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8]}]}).encode()
for _ in range(2000):
    req = urllib.request.Request(f"http://{addr}/v2/models/demand/infer", body, {"content-type": "application/json"})
    urllib.request.urlopen(req).read()
with open(f"/proc/{os.environ['EDGEFLEET_DEMO_AGENT_PID']}/status") as f:
    fields = dict(line.split(":", 1) for line in f if ":" in line)
print("RSS", fields["VmRSS"].strip(), "peak", fields["VmHWM"].strip())
