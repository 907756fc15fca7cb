#!/usr/bin/env bash
# Agent memory soak: the quick start (real hub, real agent, telemetry on) under full-speed OIP
# load from wrk, sampling the agent's RSS every few seconds. Prints a table, writes a CSV (and a
# PNG plot when gnuplot is installed), and fails if RSS grows by 2 MB or more between the end of
# the warm-up and the end of the run.
#
#   tests/soak.sh                          # 30 minutes, 10 s telemetry windows
#   SOAK_SECS=120 tests/soak.sh            # the short run CI does
#   SOAK_WINDOW_SECS=900 tests/soak.sh     # the agent's default windows
#   EDGEFLEET_BIN=target/release tests/soak.sh   # the shipped build (default: debug)
#
# Settings: SOAK_SECS (default 1800), SOAK_WARMUP_SECS (default SOAK_SECS/6: minute 5 of 30),
# SOAK_SAMPLE_SECS (default 5), SOAK_WINDOW_SECS (default 10), SOAK_MAX_GROWTH_KB (default
# 2048), SOAK_OUT (default target/soak): soak.csv and soak.png go there.
# wrk is installed from Debian when missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SOAK_SECS:-1800}
WARMUP=${SOAK_WARMUP_SECS:-$((SECS / 6))}
SAMPLE=${SOAK_SAMPLE_SECS:-5}
WINDOW=${SOAK_WINDOW_SECS:-10}
MAX_GROWTH_KB=${SOAK_MAX_GROWTH_KB:-2048}
OUT=${SOAK_OUT:-target/soak}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "==> installing wrk (the load generator) from Debian"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1 ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
  else
    echo "wrk is needed: sudo apt-get install wrk" >&2
    exit 1
  fi
fi

# The load: the demand model's 1×8 request, POSTed as fast as 8 connections go.
cat >"$OUT/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32","data":[1.9,12.5,4,18,0,0,120,115]}]}'
LUA

# Runs inside the quick start (EDGEFLEET_DEMO_THEN), which has started the hub and the agent.
cat >"$OUT/inside.sh" <<'SH'
set -euo pipefail
rss() { awk '/^VmRSS/ {print $2}' "/proc/$EDGEFLEET_DEMO_AGENT_PID/status"; }
threads() { awk '/^Threads/ {print $2}' "/proc/$EDGEFLEET_DEMO_AGENT_PID/status"; }
echo "idle after the first inference: RSS $(rss) kB, $(threads) threads" | tee "$SOAK_OUT/idle.txt"
wrk -t2 -c8 -d"${SOAK_SECS}s" -s "$SOAK_OUT/post.lua" "http://$EDGEFLEET_DEMO_AGENT_ADDR/v2/models/demand/infer" >"$SOAK_OUT/wrk.txt" 2>&1 &
WRK=$!
echo "seconds,rss_kb" >"$SOAK_OUT/soak.csv"
start=$(date +%s)
while kill -0 $WRK 2>/dev/null; do
  t=$(( $(date +%s) - start ))
  r=$(rss)
  echo "$t,$r" >>"$SOAK_OUT/soak.csv"
  printf '%6d s  %8d kB\n' "$t" "$r"
  sleep "$SOAK_SAMPLE_SECS"
done
wait $WRK || true
sleep 2
echo "after the load, idle: RSS $(rss) kB" | tee -a "$SOAK_OUT/idle.txt"
SH

echo "==> soak: ${SECS} s of wrk -c8 against the agent, ${WINDOW} s telemetry windows, RSS every ${SAMPLE} s"
EDGEFLEET_DEMO_WINDOW_SECS=$WINDOW SOAK_OUT=$OUT SOAK_SECS=$SECS SOAK_SAMPLE_SECS=$SAMPLE \
  EDGEFLEET_DEMO_THEN="bash $OUT/inside.sh" tests/quickstart.sh >"$OUT/quickstart.log" 2>&1 || {
  cat "$OUT/quickstart.log"
  exit 1
}
grep -E "^ *[0-9]+ s|RSS" "$OUT/quickstart.log" || true
grep -E "Requests/sec|Latency" "$OUT/wrk.txt" || cat "$OUT/wrk.txt"

# Flatness: the highest RSS after the warm-up against the RSS at the end of the warm-up.
read -r base peak last < <(awk -F, -v w="$WARMUP" 'NR > 1 {
    if ($1 <= w) base = $2; else if (base == "") base = $2;
    if ($1 >= w && $2 > peak) peak = $2; last = $2 }
  END { print base, peak, last }' "$OUT/soak.csv")
growth=$((peak - base))
echo "RSS at ${WARMUP} s: ${base} kB; highest after: ${peak} kB; at the end: ${last} kB; growth ${growth} kB (limit ${MAX_GROWTH_KB} kB)"

if command -v gnuplot >/dev/null; then
  gnuplot <<GP
set terminal png size 900,420
set output "$OUT/soak.png"
set datafile separator ","
set key off
set xlabel "seconds"
set ylabel "agent RSS (MB)"
set title "edgefleet-agent RSS under wrk -c8, ${WINDOW} s windows"
set yrange [0:*]
set arrow from $WARMUP, graph 0 to $WARMUP, graph 1 nohead dashtype 2
plot "$OUT/soak.csv" every ::1 using 1:(\$2/1024) with lines lw 2
GP
  echo "plot: $OUT/soak.png"
fi
if [ "$growth" -ge "$MAX_GROWTH_KB" ]; then
  echo "FAIL: the agent's RSS grew by ${growth} kB after the warm-up" >&2
  exit 1
fi
echo "soak OK"
