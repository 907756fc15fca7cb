#!/usr/bin/env bash
# Runs the aarch64 agent under qemu-user: `--version`, then the full quick start (a real x86_64
# hub and CLI, the aarch64 agent serving the test model and answering an inference).
#   cross/build.sh aarch64-unknown-linux-gnu && cross/run-qemu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
AGENT="$PWD/target/aarch64-unknown-linux-gnu/$PROFILE/edgefleet-agent"
[ -x "$AGENT" ] || { echo "build it first: cross/build.sh aarch64-unknown-linux-gnu" >&2; exit 1; }
command -v qemu-aarch64 >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user >/dev/null
file "$AGENT"
qemu-aarch64 -L /usr/aarch64-linux-gnu "$AGENT" --version
cargo build --workspace --bins --quiet
BIN_DIR=$(mktemp -d)
for b in edgefleet edgefleet-hub edgefleet-testmodel; do ln -s "$PWD/target/debug/$b" "$BIN_DIR/$b"; done
printf '#!/bin/sh\nexec qemu-aarch64 -L /usr/aarch64-linux-gnu %s "$@"\n' "$AGENT" > "$BIN_DIR/edgefleet-agent"
chmod +x "$BIN_DIR/edgefleet-agent"
EDGEFLEET_BIN=$BIN_DIR EDGEFLEET_DEMO_EXIT=1 tests/quickstart.sh
