#!/usr/bin/env bash
# The rollout benchmark: N simulated devices (default 1,000) serving demand v1, then
# `edgefleet rollout create demand 2 --tag shops --waves 1,50%,100% --bake 0`; prints the time
# from the create to every device reporting v2 active (the hub's view: GET /api/v1/devices),
# and the hub's CPU time and memory over that span.
#
#   sim/bench.sh                                   # builds the release hub, 1,000 devices
#   SIM_DEVICES=10000 sim/bench.sh
#   EDGEFLEET_BIN=target/release SIM_BIN=target/debug sim/bench.sh   # prebuilt binaries
#   SIM_BROKER=mosquitto sim/bench.sh              # an external broker: a private Mosquitto
#   SIM_STEADY_SECS=300 sim/bench.sh               # then watch telemetry ingest for 5 minutes
#
# SIM_BROKER: `embedded` (default: the hub's rumqttd) or `mosquitto` (a Mosquitto of its own on a
# free port, file limit raised, the hub connected with --mqtt-url: the setup for large fleets).
# SIM_STEADY_SECS (give several 60 s windows, e.g. 300): after the rollout, samples the
# simulator's telemetry every 30 s: records sent, records acked by the hub, the devices' outbox
# backlog. Keeping up: the hub acks all the fleet sent but at most one window's worth (N), and
# the backlog ends under N.
#
# The hub (edgefleet-hub, edgefleet) comes from EDGEFLEET_BIN (default: built here with
# --release); the simulator and the test-model writer from SIM_BIN (default: target/debug,
# built here: the simulator's own CPU is not what is measured). Everything runs in a temp dir,
# ports chosen here; both processes are stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${SIM_DEVICES:-1000}
BROKER=${SIM_BROKER:-embedded}
STEADY=${SIM_STEADY_SECS:-0}
case "$BROKER" in embedded|mosquitto) ;; *) echo "SIM_BROKER must be embedded or mosquitto" >&2; exit 2;; esac
TARGET=${CARGO_TARGET_DIR:-target}
if [ -z "${EDGEFLEET_BIN:-}" ]; then
  echo "==> building the release hub (cargo build --release -p edgefleet-hub)"
  cargo build --release -p edgefleet-hub --quiet
  EDGEFLEET_BIN=$TARGET/release
fi
if [ -z "${SIM_BIN:-}" ]; then
  echo "==> building the simulator (cargo build -p edgefleet-sim -p edgefleet-tests --bins)"
  cargo build -p edgefleet-sim -p edgefleet-tests --bins --quiet
  SIM_BIN=$TARGET/debug
fi
BIN=$(cd "$EDGEFLEET_BIN" && pwd)
SIM=$(cd "$SIM_BIN" && pwd)
DIR=$(mktemp -d -t edgefleet-simbench.XXXXXX)
ef() { "$BIN/edgefleet" "$@"; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Devices whose status reports demand VERSION active, from the hub's device list.
on_version() {
  curl -sf -H "authorization: Bearer $EDGEFLEET_TOKEN" "$EDGEFLEET_HUB/api/v1/devices" | python3 -c '
import json, sys
v = int(sys.argv[1])
ds = json.load(sys.stdin)
print(sum(1 for d in ds if any(m["name"] == "demand" and m["version"] == v
                               for m in ((d.get("status") or {}).get("active") or []))))' "$1"
}
# utime + stime of PID, in seconds.
cpu_secs() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat"; }
mem() { awk '/^(VmRSS|VmHWM)/ { printf "%s %.1f MB  ", $1, $2 / 1024 }' "/proc/$1/status"; }
wait_for() { # what version count timeout_secs
  local start=$SECONDS n=0
  while [ $((SECONDS - start)) -lt "$4" ]; do
    n=$(on_version "$2" || echo 0)
    [ "$n" -ge "$3" ] && return 0
    sleep 0.2
  done
  echo "timed out after $4 s waiting for $1 ($n of $3); logs in $DIR" >&2
  tail -5 "$DIR/sim.log" >&2
  return 1
}

echo "==> keys, hub, models v1 and v2 (in $DIR)"
mkdir -p "$DIR/keys"
ef keygen --role root --out "$DIR/keys/root.key" >/dev/null
ef keygen --role hub --out "$DIR/keys/hub.key" >/dev/null
ef delegate --root-key "$DIR/keys/root.key" --to "$DIR/keys/hub.key.pub" --models '*' --expires-in 1d --out "$DIR/keys/hub.delegation" >/dev/null
HTTP_PORT=$(free_port)
MQTT_PORT=$(free_port)
ENROLL=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
if [ "$BROKER" = mosquitto ]; then
  command -v mosquitto >/dev/null || { echo "SIM_BROKER=mosquitto needs mosquitto (apt-get install mosquitto)" >&2; exit 2; }
  cat >"$DIR/mosquitto.conf" <<CONF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence false
max_connections -1
max_inflight_messages 64
max_queued_messages 10000
CONF
  # One connection per simulated device (and the hub's): raise the file limit first.
  (ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec mosquitto -c "$DIR/mosquitto.conf") >"$DIR/mosquitto.log" 2>&1 &
  BROKER_PID=$!
  PIDS+=("$BROKER_PID")
  for _ in $(seq 1 100); do
    (echo >"/dev/tcp/127.0.0.1/$MQTT_PORT") 2>/dev/null && break
    sleep 0.1
  done
  MQTT_ARGS=(--mqtt-url "mqtt://127.0.0.1:$MQTT_PORT")
else
  MQTT_ARGS=(--mqtt-listen "127.0.0.1:$MQTT_PORT")
fi
EDGEFLEET_HUB_ROOT_KEY="$DIR/keys/root.key.pub" \
EDGEFLEET_HUB_SIGNING_KEY="$DIR/keys/hub.key" \
EDGEFLEET_HUB_DELEGATION="$DIR/keys/hub.delegation" \
EDGEFLEET_HUB_ENROLLMENT_TOKEN="$ENROLL" \
EDGEFLEET_LOG=warn \
  "$BIN/edgefleet-hub" serve --data-dir "$DIR/hub" --listen "127.0.0.1:$HTTP_PORT" "${MQTT_ARGS[@]}" >"$DIR/hub.log" 2>&1 &
HUB_PID=$!
PIDS+=("$HUB_PID")
export EDGEFLEET_HUB="http://127.0.0.1:$HTTP_PORT"
for _ in $(seq 1 300); do
  curl -sf "$EDGEFLEET_HUB/api/v1/health" >/dev/null 2>&1 && [ -s "$DIR/hub/admin-token" ] && break
  sleep 0.1
done
export EDGEFLEET_TOKEN=$(cat "$DIR/hub/admin-token")
for v in 1 2; do
  "$SIM/edgefleet-testmodel" "$DIR/v$v" --version "$v" --seed "$v" >/dev/null
  ef sign --key "$DIR/keys/root.key" --spec "$DIR/v$v/spec.json" --model "$DIR/v$v/model.onnx" --out "$DIR/v$v/m" >/dev/null
  ef push "$DIR/v$v/m" "$DIR/v$v/model.onnx" >/dev/null
done
ef assign --tag shops demand 1 >/dev/null

echo "==> $N simulated devices enrolling and installing v1"
start=$SECONDS
"$SIM/edgefleet-sim" --hub "$EDGEFLEET_HUB" --mqtt "mqtt://127.0.0.1:$MQTT_PORT" \
  --root-key "$DIR/keys/root.key.pub" --enroll-token "$ENROLL" --devices "$N" --tag shops \
  --seed 7 --rate 1 --window-secs 60 --report-every 5 --data-dir "$DIR/sim" >"$DIR/sim.log" 2>&1 &
SIM_PID=$!
PIDS+=("$SIM_PID")
wait_for "every device on v1" 1 "$N" 600
echo "    $N devices on v1 after $((SECONDS - start)) s; hub: $(mem "$HUB_PID")"

echo "==> edgefleet rollout create demand 2 --tag shops --waves 1,50%,100% --bake 0"
cpu0=$(cpu_secs "$HUB_PID")
t0=$(date +%s.%N)
ef rollout create demand 2 --tag shops --waves 1,50%,100% --bake 0 >/dev/null
wait_for "every device on v2" 2 "$N" 600
t1=$(date +%s.%N)
cpu1=$(cpu_secs "$HUB_PID")
elapsed=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
hub_cpu=$(python3 -c "print(f'{$cpu1 - $cpu0:.2f}')")
echo
echo "devices: $N   broker: $BROKER   rollout create -> 100 % active on v2: $elapsed s"
echo "hub CPU during the rollout: $hub_cpu s ($(python3 -c "print(f'{100 * ($cpu1 - $cpu0) / ($t1 - $t0):.0f}')") % of one core)   hub memory: $(mem "$HUB_PID")"
echo "simulator: $(mem "$SIM_PID")  last report: $(grep -v '^\s*$' "$DIR/sim.log" | tail -1)"
ef rollout status 1 2>/dev/null | head -5 || true

[ "$STEADY" -gt 0 ] || exit 0
# The simulator's last report: "... records sent S acked A; outbox backlog B dropped D".
sim_counts() {
  grep -o 'records sent [0-9]* acked [0-9]*; outbox backlog [0-9]*' "$DIR/sim.log" | tail -1 |
    awk '{ gsub(";", ""); print $3, $5, $8 }'
}
echo
echo "==> steady state for $STEADY s: telemetry ingest (one record per device per 60 s window)"
printf '%8s %10s %10s %12s %10s %10s\n' "t (s)" "sent" "acked" "acked/min" "backlog" "hub CPU %"
read -r sent0 acked0 backlog0 < <(sim_counts)
t0=$SECONDS; prev_acked=$acked0; prev_t=$t0; prev_cpu=$(cpu_secs "$HUB_PID"); max_backlog=$backlog0
printf '%8s %10s %10s %12s %10s %10s\n' 0 "$sent0" "$acked0" - "$backlog0" -
while [ $((SECONDS - t0)) -lt "$STEADY" ]; do
  sleep 30
  read -r sent acked backlog < <(sim_counts)
  cpu=$(cpu_secs "$HUB_PID")
  dt=$((SECONDS - prev_t))
  printf '%8s %10s %10s %12s %10s %10s\n' $((SECONDS - t0)) "$sent" "$acked" \
    "$(( (acked - prev_acked) * 60 / (dt > 0 ? dt : 1) ))" "$backlog" \
    "$(python3 -c "print(f'{100 * ($cpu - $prev_cpu) / max($dt, 1):.0f}')")"
  prev_acked=$acked; prev_t=$SECONDS; prev_cpu=$cpu
  [ "$backlog" -gt "$max_backlog" ] && max_backlog=$backlog
done
span=$((SECONDS - t0))
echo "in $span s: the fleet sent $((sent - sent0)) records, the hub acked $((acked - acked0)); backlog $backlog0 -> $backlog (max $max_backlog); hub: $(mem "$HUB_PID")"
# Windows close together (every device started at once), so right after one closes up to N
# records wait: keeping up is acking all but at most one window's worth, with the backlog back
# under N.
if [ $((acked - acked0)) -ge $((sent - sent0 - N)) ] && [ "$backlog" -le "$N" ]; then
  echo "telemetry: keeps up"
else
  echo "telemetry: does NOT keep up"
fi
