#!/usr/bin/env bash
# Checks that the Triton/KServe Python HTTP client works unchanged against the agent: installs
# tritonclient into target/oip-venv (from PyPI), starts the quick-start hub and agent, runs
# tests/oip_client_check.py against the agent.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/oip-venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import tritonclient.http' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements-oip.txt
fi
EDGEFLEET_DEMO_THEN="$PWD/$VENV/bin/python $PWD/tests/oip_client_check.py" exec tests/quickstart.sh
