#!/usr/bin/env bash
# Agent footprint: stripped binary size per build profile, and the RSS of the agent serving the
# test model after 2000 OIP requests. Usage: tests/footprint.sh [PROFILE...] (default: release).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILES=("$@")
[ ${#PROFILES[@]} -gt 0 ] || PROFILES=(release)
cargo build --workspace --bins --quiet   # hub, CLI and test-model tools (debug) for the quick start
for P in "${PROFILES[@]}"; do
  cargo build --profile "$P" -p edgefleet-agent --bin edgefleet-agent --quiet
  BIN_DIR=$(mktemp -d)
  for b in edgefleet edgefleet-hub edgefleet-testmodel; do ln -s "$PWD/target/debug/$b" "$BIN_DIR/$b"; done
  cp "target/$P/edgefleet-agent" "$BIN_DIR/edgefleet-agent"
  strip "$BIN_DIR/edgefleet-agent"
  SIZE=$(stat -c %s "$BIN_DIR/edgefleet-agent")
  RSS=$(EDGEFLEET_BIN=$BIN_DIR EDGEFLEET_DEMO_THEN='python3 - <<PY
import json, os, urllib.request
addr = os.environ["EDGEFLEET_AGENT_ADDR"]
body = json.dumps({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8]}]}).encode()
for _ in range(2000):
    urllib.request.urlopen(urllib.request.Request(f"http://{addr}/v2/models/demand/infer", body, {"content-type": "application/json"})).read()
status = open(f"/proc/{os.environ[\"EDGEFLEET_AGENT_PID\"]}/status").read()
fields = dict(l.split(":", 1) for l in status.splitlines())
print("RSS", fields["VmRSS"].strip(), "HWM", fields["VmHWM"].strip())
PY' tests/quickstart.sh 2>/dev/null | grep '^RSS')
  printf '%-16s stripped %6.2f MiB   %s\n' "$P" "$(echo "$SIZE / 1048576" | bc -l)" "$RSS"
  rm -rf "$BIN_DIR"
done
