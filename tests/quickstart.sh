#!/usr/bin/env bash
# Edgefleet quick start: one command starts a hub and an agent on this machine, with fresh keys,
# signs and pushes a demand-forecast model, assigns it, and runs one inference.
#
#   tests/quickstart.sh                 # builds (debug), runs until Ctrl-C
#   EDGEFLEET_DEMO_EXIT=1 tests/quickstart.sh   # exits after the first inference (CI does this)
#   EDGEFLEET_DEMO_THEN='cmd' tests/quickstart.sh  # runs cmd, then exits with its status
#
# The command runs with EDGEFLEET_HUB and EDGEFLEET_TOKEN (the CLI's), and EDGEFLEET_DEMO_AGENT_ADDR,
# EDGEFLEET_DEMO_AGENT_PID, EDGEFLEET_DEMO_DIR, EDGEFLEET_DEMO_BIN, EDGEFLEET_DEMO_ENROLL (the
# enrollment token) and EDGEFLEET_DEMO_MQTT_PORT set. None of them starts with EDGEFLEET_AGENT_ or
# EDGEFLEET_HUB_, the config prefixes, so an agent or hub started from the command is not
# refused for an unknown variable.
#
# Everything lives in $EDGEFLEET_DEMO_DIR (default: a new temp dir). Ports are chosen by the OS
# (the hub and agent bind 127.0.0.1:0 and log their address), so nothing clashes with services
# already on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${EDGEFLEET_DEMO_DIR:-$(mktemp -d -t edgefleet-demo.XXXXXX)}
BIN=${EDGEFLEET_BIN:-}
if [ -z "$BIN" ]; then
  echo "==> building (cargo build --workspace --bins)"
  cargo build --workspace --bins --quiet
  BIN=target/debug
fi
BIN=$(cd "$BIN" && pwd)
ef() { "$BIN/edgefleet" "$@"; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Waits for a log line and prints the addr=... it carries.
wait_addr() { # file pattern
  for _ in $(seq 1 300); do
    if line=$(grep -m1 "$2" "$1" 2>/dev/null); then
      echo "$line" | sed -E 's/.*addr=([0-9.:]+).*/\1/'
      return 0
    fi
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; return 1
}

echo "==> keys in $DIR/keys (root: offline admin key; hub: online key with a delegation)"
mkdir -p "$DIR/keys"
ef keygen --role root --out "$DIR/keys/root.key"
ef keygen --role hub --out "$DIR/keys/hub.key"
ef delegate --root-key "$DIR/keys/root.key" --to "$DIR/keys/hub.key.pub" --models '*' --expires-in 30d --out "$DIR/keys/hub.delegation"

echo "==> starting the hub (HTTP and its embedded MQTT broker on ports chosen here)"
# rumqttd cannot listen on port 0: pick a free port for it (7883, its default, may be taken).
MQTT_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ENROLL=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
EDGEFLEET_HUB_ROOT_KEY="$DIR/keys/root.key.pub" \
EDGEFLEET_HUB_SIGNING_KEY="$DIR/keys/hub.key" \
EDGEFLEET_HUB_DELEGATION="$DIR/keys/hub.delegation" \
EDGEFLEET_HUB_ENROLLMENT_TOKEN="$ENROLL" \
  "$BIN/edgefleet-hub" serve --data-dir "$DIR/hub" --listen 127.0.0.1:0 --mqtt-listen "127.0.0.1:$MQTT_PORT" >"$DIR/hub.log" 2>&1 &
PIDS+=($!)
HUB_ADDR=$(wait_addr "$DIR/hub.log" "hub listening")
export EDGEFLEET_HUB="http://$HUB_ADDR"
export EDGEFLEET_TOKEN=$(cat "$DIR/hub/admin-token")
echo "    hub at $EDGEFLEET_HUB (admin token in $DIR/hub/admin-token)"

echo "==> making, signing (offline, root key) and pushing the demand model"
"$BIN/edgefleet-testmodel" "$DIR/model" --name demand --version 1 >/dev/null
ef sign --key "$DIR/keys/root.key" --spec "$DIR/model/spec.json" --model "$DIR/model/model.onnx" --out "$DIR/model/demand-1.manifest"
ef push "$DIR/model/demand-1.manifest" "$DIR/model/model.onnx"

echo "==> starting an agent (device shop-1)"
cat >"$DIR/agent.toml" <<TOML
device_id = "shop-1"
tags = ["shops"]
hub_url = "$EDGEFLEET_HUB"
data_dir = "$DIR/agent"
root_key = "$DIR/keys/root.key.pub"
enrollment_token = "$ENROLL"
listen = "127.0.0.1:0"
poll_interval_secs = 5
mqtt_url = "mqtt://127.0.0.1:$MQTT_PORT"
# Short windows for the demo (default 900 s).
telemetry_window_secs = ${EDGEFLEET_DEMO_WINDOW_SECS:-10}
TOML
"$BIN/edgefleet-agent" check-config --config "$DIR/agent.toml"
"$BIN/edgefleet-agent" run --config "$DIR/agent.toml" >"$DIR/agent.log" 2>&1 &
AGENT_PID=$!
PIDS+=($AGENT_PID)
AGENT_ADDR=$(wait_addr "$DIR/agent.log" "agent serving OIP v2")

echo "==> assigning demand v1 to shop-1"
ef assign --device shop-1 demand 1 >/dev/null
for _ in $(seq 1 300); do
  curl -sf "http://$AGENT_ADDR/v2/models/demand/ready" >/dev/null && break
  sleep 0.1
done

echo "==> inference: curl -s http://$AGENT_ADDR/v2/models/demand/infer"
curl -sf -H 'content-type: application/json' "http://$AGENT_ADDR/v2/models/demand/infer" -d '{
  "id": "quickstart",
  "inputs": [{"name": "x", "shape": [2, 8], "datatype": "FP32",
              "data": [[1.9, 12.5, 4, 18, 0, 0, 120, 115], [2.4, 13.0, 5, 18, 1, 0, 130, 118]]}]
}'
echo
ef devices

if [ -n "${EDGEFLEET_DEMO_THEN:-}" ]; then
  echo "==> running: $EDGEFLEET_DEMO_THEN (EDGEFLEET_DEMO_AGENT_ADDR=$AGENT_ADDR)"
  EDGEFLEET_DEMO_AGENT_ADDR=$AGENT_ADDR EDGEFLEET_DEMO_AGENT_PID=$AGENT_PID \
  EDGEFLEET_DEMO_DIR=$DIR EDGEFLEET_DEMO_BIN=$BIN EDGEFLEET_DEMO_ENROLL=$ENROLL \
  EDGEFLEET_DEMO_MQTT_PORT=$MQTT_PORT bash -c "$EDGEFLEET_DEMO_THEN"
  exit $?
fi
if [ "${EDGEFLEET_DEMO_EXIT:-0}" = 1 ]; then
  echo "==> quick start OK"
  exit 0
fi
cat <<MSG

Hub:   $EDGEFLEET_HUB   (logs: $DIR/hub.log)
Agent: http://$AGENT_ADDR  (logs: $DIR/agent.log)
MQTT:  mqtt://127.0.0.1:$MQTT_PORT (embedded broker; telemetry windows every 10 s)
Try:   export EDGEFLEET_HUB=$EDGEFLEET_HUB EDGEFLEET_TOKEN=\$(cat $DIR/hub/admin-token)
       $BIN/edgefleet models
       $BIN/edgefleet drift demand 1          # after a window with traffic: drift per feature
       curl -s $EDGEFLEET_HUB/metrics
       $BIN/edgefleet-testmodel $DIR/v2 --version 2 --seed 2 && \\
       $BIN/edgefleet sign --key $DIR/keys/root.key --spec $DIR/v2/spec.json --model $DIR/v2/model.onnx --out $DIR/v2/m && \\
       $BIN/edgefleet push $DIR/v2/m $DIR/v2/model.onnx && $BIN/edgefleet assign --tag shops demand 2
Ctrl-C stops both.
MSG
wait
