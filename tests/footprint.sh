#!/usr/bin/env bash
# Agent footprint: stripped binary size per build profile, and the RSS of the agent serving the
# test model after 2000 OIP requests, and batch-1 inference time of a bench built the same way. Usage: tests/footprint.sh [PROFILE...] (default: release).
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
  RSS=$(EDGEFLEET_BIN=$BIN_DIR EDGEFLEET_DEMO_THEN="python3 $PWD/tests/footprint_load.py" tests/quickstart.sh 2>/dev/null | grep '^RSS' || echo "RSS unknown")
  INFER=$(BENCH_ONLY_INFERENCE=1 cargo bench --quiet --profile "$P" -p edgefleet-tests --bench serving 2>/dev/null | grep '^inference' || echo "inference unknown")
  printf '%-16s stripped %6.2f MiB   %s   %s\n' "$P" "$(echo "$SIZE / 1048576" | bc -l)" "$RSS" "$INFER"
  rm -rf "$BIN_DIR"
done
