#!/usr/bin/env bash
# Runs a cross-built agent under qemu-user: `--version`, then the full quick start (a real
# x86_64 hub and CLI, the foreign agent enrolling, downloading, verifying, serving the test model
# and answering an inference).
#   cross/build.sh aarch64-unknown-linux-gnu && cross/run-qemu.sh
#   cross/run-qemu.sh armv7-unknown-linux-gnueabihf      (PROFILE=… as for build.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
TARGET=${1:-aarch64-unknown-linux-gnu}
case $TARGET in
  aarch64-unknown-linux-gnu) QEMU=qemu-aarch64; SYSROOT=/usr/aarch64-linux-gnu ;;
  armv7-unknown-linux-gnueabihf) QEMU=qemu-arm; SYSROOT=/usr/arm-linux-gnueabihf ;;
  *) echo "no qemu mapping for $TARGET" >&2; exit 2 ;;
esac
AGENT="$PWD/target/$TARGET/$PROFILE/edgefleet-agent"
[ -x "$AGENT" ] || { echo "build it first: cross/build.sh $TARGET" >&2; exit 1; }
command -v "$QEMU" >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user >/dev/null
file "$AGENT"
"$QEMU" -L "$SYSROOT" "$AGENT" --version
cargo build --workspace --bins --quiet
BIN_DIR=$(mktemp -d)
trap 'rm -rf "$BIN_DIR"' EXIT
for b in edgefleet edgefleet-hub edgefleet-testmodel; do ln -s "$PWD/target/debug/$b" "$BIN_DIR/$b"; done
printf '#!/bin/sh\nexec %s -L %s %s "$@"\n' "$QEMU" "$SYSROOT" "$AGENT" > "$BIN_DIR/edgefleet-agent"
chmod +x "$BIN_DIR/edgefleet-agent"
EDGEFLEET_BIN=$BIN_DIR EDGEFLEET_DEMO_EXIT=1 tests/quickstart.sh
