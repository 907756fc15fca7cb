#!/usr/bin/env bash
# The second half of tools/mlserver/compare.sh, run by tests/quickstart.sh as its
# EDGEFLEET_DEMO_THEN command while the quick start's hub and agent are up. Not meant to be
# run by hand.
#
# From the quick start: EDGEFLEET_HUB, EDGEFLEET_TOKEN (the CLI's), EDGEFLEET_DEMO_DIR (keys
# in keys/), EDGEFLEET_DEMO_BIN, EDGEFLEET_DEMO_AGENT_ADDR, EDGEFLEET_DEMO_AGENT_PID.
# From compare.sh: MLCMP_WORK (make_model.py's output), MLCMP_PYTHON (the venv's python) and
# the load settings MLCMP_THREADS, MLCMP_CONNS, MLCMP_DURATION, MLCMP_WARMUP, MLCMP_ROUNDS,
# MLCMP_WORKERS.
#
# 1. signs (offline root key), pushes and assigns the gbr model to the quick start's device,
#    and waits until the agent serves it;
# 2. starts MLServer on free ports with the same model and waits until it is ready;
# 3. checks once that both answer the same predictions;
# 4. drives both with wrk, alternating agent and MLServer round by round;
# 5. prints the table and the RSS of both.
set -euo pipefail
# A failing command inside $(...) fails the script too.
shopt -s inherit_errexit
HERE=$(cd "$(dirname "$0")" && pwd)
W=$MLCMP_WORK
ef() { "$EDGEFLEET_DEMO_BIN/edgefleet" "$@"; }
AGENT="http://$EDGEFLEET_DEMO_AGENT_ADDR"

echo "==> signing, pushing and assigning gbr v1 to shop-1"
ef sign --key "$EDGEFLEET_DEMO_DIR/keys/root.key" --spec "$W/agent/spec.json" \
  --model "$W/agent/model.onnx" --out "$W/agent/gbr-1.manifest"
ef push "$W/agent/gbr-1.manifest" "$W/agent/model.onnx"
ef assign --device shop-1 gbr 1 >/dev/null
# The agent polls the hub every 5 s (the quick start's poll_interval_secs), then downloads,
# verifies, runs the smoke test and swaps the model in.
for i in $(seq 1 600); do
  curl -sf "$AGENT/v2/models/gbr/ready" >/dev/null && break
  [ "$i" = 600 ] && { echo "FAIL: the agent did not serve gbr within 60 s; log: $EDGEFLEET_DEMO_DIR/agent.log" >&2; exit 1; }
  sleep 0.1
done
echo "    the agent serves gbr at $AGENT"

echo "==> starting MLServer (parallel_workers=$MLCMP_WORKERS) on free ports"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(free_port)
GRPC_PORT=$(free_port)
METRICS_PORT=$(free_port)
# Server-wide settings. Everything not named here keeps MLServer's default (metrics endpoint
# on, gzip middleware on — wrk asks for no gzip — no adaptive batching). Two choices:
# - parallel_workers: 0 (the default here) runs inference inside the server's own process,
#   one process like the agent; MLServer's default, 1, hands every request to a separate
#   worker process over a queue (MLCMP_WORKERS=1 measures that).
# - debug: false, because debug (MLServer's default: true) turns on uvicorn's access log, one
#   log line per request, which the agent does not write either.
cat >"$W/mlserver/settings.json" <<JSON
{
  "host": "127.0.0.1",
  "http_port": $HTTP_PORT,
  "grpc_port": $GRPC_PORT,
  "metrics_port": $METRICS_PORT,
  "parallel_workers": $MLCMP_WORKERS,
  "debug": false
}
JSON
VENV_BIN=$(dirname "$MLCMP_PYTHON")
# In its own session, so that it and any worker it forks stop together (kill of the group).
# Its .metrics and .envs folders go into the model repository, not the work tree.
(cd "$W/mlserver" && exec setsid "$VENV_BIN/mlserver" start . >"$W/mlserver.log" 2>&1) &
MLS_PID=$!
stop_mlserver() {
  kill -- -"$MLS_PID" 2>/dev/null || true
  wait "$MLS_PID" 2>/dev/null || true
}
trap stop_mlserver EXIT
MLS="http://127.0.0.1:$HTTP_PORT"
for i in $(seq 1 1200); do
  curl -sf "$MLS/v2/models/gbr/ready" >/dev/null && break
  if [ "$i" = 1200 ] || ! kill -0 "$MLS_PID" 2>/dev/null; then
    echo "FAIL: MLServer did not get ready within 120 s; its log:" >&2; cat "$W/mlserver.log" >&2; exit 1
  fi
  sleep 0.1
done
echo "    MLServer $("$MLCMP_PYTHON" -c 'import mlserver; print(mlserver.__version__)') serves gbr at $MLS (log: $W/mlserver.log)"

echo "==> same answers? (both servers, the bodies of the timed runs, every row)"
"$MLCMP_PYTHON" "$HERE/results.py" check "$AGENT/v2/models/gbr/infer" "$MLS/v2/models/gbr/infer" \
  "$W/batch1.json" "$W/batch64.json"

# One wrk run; prints "rps p50_us p99_us" and fails on any error or non-2xx answer.
run_wrk() { # url body duration
  local out line
  out=$(wrk -t"$MLCMP_THREADS" -c"$MLCMP_CONNS" -d"$3" -s "$HERE/post.lua" "$1" -- "$2")
  line=$(grep '^RESULT ' <<<"$out") || { echo "FAIL: no RESULT line from wrk:" >&2; echo "$out" >&2; return 1; }
  if ! grep -q ' errors=0$' <<<"$line"; then
    echo "FAIL: wrk saw errors against $1 ($2):" >&2; echo "$out" >&2; return 1
  fi
  sed -E 's/.* rps=([0-9.]+) p50_us=([0-9]+) p99_us=([0-9]+) .*/\1 \2 \3/' <<<"$line"
}

declare -A URL=([agent]="$AGENT/v2/models/gbr/infer" [mlserver]="$MLS/v2/models/gbr/infer")
BODIES=(batch1 batch64)
echo "==> warm-up: $MLCMP_WARMUP per server and body (not counted)"
for body in "${BODIES[@]}"; do
  for side in agent mlserver; do
    run_wrk "${URL[$side]}" "$W/$body.json" "$MLCMP_WARMUP" >/dev/null
  done
done

echo "==> $MLCMP_ROUNDS rounds, wrk -t$MLCMP_THREADS -c$MLCMP_CONNS -d$MLCMP_DURATION, alternating agent and MLServer"
RESULTS="$W/results.tsv"
: >"$RESULTS"
for round in $(seq 1 "$MLCMP_ROUNDS"); do
  for body in "${BODIES[@]}"; do
    for side in agent mlserver; do
      res=$(run_wrk "${URL[$side]}" "$W/$body.json" "$MLCMP_DURATION")
      read -r rps p50 p99 <<<"$res"
      printf '    round %s %-8s %-8s %10.0f req/s  p50 %6s µs  p99 %6s µs\n' "$round" "$body" "$side" "$rps" "$p50" "$p99"
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$body" "$side" "$round" "$rps" "$p50" "$p99" >>"$RESULTS"
    done
  done
done

# VmRSS in kB; MLServer's figure is the sum over its process and every descendant (worker
# processes when parallel_workers > 0).
vmrss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
descendants() { echo "$1"; local c; for c in $(ps -o pid= --ppid "$1"); do descendants "$c"; done; }
AGENT_KB=$(vmrss "$EDGEFLEET_DEMO_AGENT_PID")
MLS_KB=0
MLS_N=0
for p in $(descendants "$MLS_PID"); do
  kb=$(vmrss "$p" 2>/dev/null) || continue
  MLS_KB=$((MLS_KB + kb))
  MLS_N=$((MLS_N + 1))
done

echo
echo "==> results: model gbr (100 trees, depth 4, 8 FP32 features), OIP v2 JSON, wrk -t$MLCMP_THREADS -c$MLCMP_CONNS -d$MLCMP_DURATION," \
  "$MLCMP_ROUNDS rounds each, medians over rounds; MLServer parallel_workers=$MLCMP_WORKERS, debug=false"
echo
"$MLCMP_PYTHON" "$HERE/results.py" table "$RESULTS" "$AGENT_KB" "$MLS_KB" "$MLS_N" | tee "$W/table.md"
