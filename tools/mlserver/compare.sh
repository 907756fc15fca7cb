#!/usr/bin/env bash
# The agent against Seldon MLServer, the server a user would pick instead, on the same model
# and the same requests. A by-hand benchmark (not in CI); a default run takes about 2.5 minutes
# once the venv and the release build exist.
#
#   tools/mlserver/compare.sh
#
# 1. makes target/mlserver-venv from tools/mlserver/requirements.txt (PyPI) when missing or
#    when the requirements changed; installs wrk (Debian) when missing, as root;
# 2. builds the release binaries when missing (they are what ships);
# 3. makes the model (tools/mlserver/make_model.py) into a temp dir: a scikit-learn
#    GradientBoostingRegressor as model.joblib for MLServer and as ONNX for the agent;
# 4. runs the quick start (tests/quickstart.sh, release binaries) with
#    tools/mlserver/in_quickstart.sh as its EDGEFLEET_DEMO_THEN command, which deploys the
#    model to the agent, starts MLServer on free ports, checks that both answer the same,
#    drives both with wrk in alternating rounds and prints the table and the RSS of both.
#
# Settings (environment):
#   MLCMP_THREADS=2 MLCMP_CONNS=8   wrk threads and connections, the same for both servers
#   MLCMP_DURATION=10s              one timed wrk run
#   MLCMP_ROUNDS=3                  rounds (at least 2); each runs agent then MLServer per body
#   MLCMP_WARMUP=2s                 one untimed run per server and body first
#   MLCMP_WORKERS=0                 MLServer's parallel_workers (0: inference in its one process)
#   EDGEFLEET_BIN=target/release    the binaries to run
#   MLCMP_KEEP=1                    keep the temp dir (model, logs, results.tsv, table.md)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

export MLCMP_THREADS=${MLCMP_THREADS:-2} MLCMP_CONNS=${MLCMP_CONNS:-8} MLCMP_DURATION=${MLCMP_DURATION:-10s}
export MLCMP_ROUNDS=${MLCMP_ROUNDS:-3} MLCMP_WARMUP=${MLCMP_WARMUP:-2s} MLCMP_WORKERS=${MLCMP_WORKERS:-0}
if [ "$MLCMP_ROUNDS" -lt 2 ]; then
  echo "MLCMP_ROUNDS must be at least 2: single rounds on this shared machine mislead" >&2
  exit 2
fi

# 1. Python side. The venv is remade when the requirements change, so the pins are what runs.
VENV=target/mlserver-venv
REQ=tools/mlserver/requirements.txt
if [ ! -x "$VENV/bin/mlserver" ] || ! cmp -s "$REQ" "$VENV/requirements.txt"; then
  echo "==> making $VENV from $REQ (pip, PyPI)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ"
  cp "$REQ" "$VENV/requirements.txt"
fi
export MLCMP_PYTHON=$ROOT/$VENV/bin/python

# The load generator: wrk (C, event loop), so that the client costs both servers the same
# and little, and one Lua script posts the same body to both.
if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "==> installing the Debian package wrk (the load generator; not installed), as root: apt-get install wrk"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  else
    echo "wrk is not installed and this is not root: run 'sudo apt-get install wrk' first" >&2
    exit 1
  fi
fi

# 2. The shipped build.
BIN=${EDGEFLEET_BIN:-target/release}
if [ "$BIN" = target/release ]; then
  for b in edgefleet edgefleet-hub edgefleet-agent edgefleet-testmodel; do
    if [ ! -x "target/release/$b" ]; then
      echo "==> building the release binaries (target/release/$b is missing)"
      cargo build --release --workspace --bins
      break
    fi
  done
fi
export EDGEFLEET_BIN=$BIN

# 3. The model, into a temp dir.
WORK=$(mktemp -d -t edgefleet-mlserver.XXXXXX)
if [ "${MLCMP_KEEP:-0}" = 1 ]; then
  echo "==> keeping $WORK"
else
  # The quick start's hub and agent get their SIGTERM as it exits and may still be writing:
  # give them a moment before the dir goes.
  trap 'sleep 1; rm -rf "$WORK" 2>/dev/null || true' EXIT
fi
export MLCMP_WORK=$WORK
echo "==> making the model (tools/mlserver/make_model.py) in $WORK"
"$MLCMP_PYTHON" tools/mlserver/make_model.py --out "$WORK"

# 4. The quick start (its own temp dir for hub and agent) runs the rest while both are up and
# stops them afterwards; the second script stops MLServer.
echo "==> quick start with $BIN, then tools/mlserver/in_quickstart.sh"
EDGEFLEET_DEMO_DIR="$WORK/quickstart" EDGEFLEET_DEMO_THEN="$ROOT/tools/mlserver/in_quickstart.sh" \
  tests/quickstart.sh
