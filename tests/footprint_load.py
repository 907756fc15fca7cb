"""Sends 2000 (FOOTPRINT_N) OIP infer requests to the agent, then prints its RSS and peak RSS (used by footprint.sh).

FOOTPRINT_IDS=1: each request carries an id, so the agent keeps every prediction for feedback
(the matching store's case: truths that come a day later); none is answered, so all 2000 stay.
"""
import json
import os
import urllib.request

addr = os.environ["EDGEFLEET_DEMO_AGENT_ADDR"]
ids = os.environ.get("FOOTPRINT_IDS") == "1"
for i in range(int(os.environ.get("FOOTPRINT_N", "2000"))):
    doc = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8]}]}
    if ids:
        doc["id"] = f"footprint-{i}"
    req = urllib.request.Request(f"http://{addr}/v2/models/demand/infer", json.dumps(doc).encode(), {"content-type": "application/json"})
    urllib.request.urlopen(req).read()
with open(f"/proc/{os.environ['EDGEFLEET_DEMO_AGENT_PID']}/status") as f:
    fields = dict(line.split(":", 1) for line in f if ":" in line)
print("RSS", fields["VmRSS"].strip(), "peak", fields["VmHWM"].strip(), "anon", fields["RssAnon"].strip())
