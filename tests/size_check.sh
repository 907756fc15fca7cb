#!/usr/bin/env bash
# Binary-size guard (CI runs it): builds the agent in the dev profile, strips it, and
# fails when it is more than 10 % larger than the size BENCHMARKS.md records on its
# `size-check:` line. A feature that makes the agent grow is then a deliberate change: measure
# the shipped `release` size (tests/footprint.sh), update BENCHMARKS.md, and record the new dev
# size there (this script prints the line to paste).
#
# The dev profile is checked because CI builds it anyway; it tracks the release size (the same
# dependencies and features), and a 10 % margin absorbs toolchain noise.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT_PERCENT=${SIZE_CHECK_LIMIT_PERCENT:-10}
# The workspace's binaries, as the quick start builds them: features as shipped (no test-only
# dev-dependency features unified in), and the soak and interop checks after it reuse the build.
cargo build --workspace --bins --quiet
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
cp target/debug/edgefleet-agent "$tmp"
strip "$tmp"
size=$(stat -c %s "$tmp")
recorded=$(sed -n 's/.*size-check: edgefleet-agent dev stripped \([0-9]*\) bytes.*/\1/p' BENCHMARKS.md | head -1)
line="<!-- size-check: edgefleet-agent dev stripped $size bytes -->"
if [ -z "$recorded" ]; then
  echo "BENCHMARKS.md has no size-check line; add: $line" >&2
  exit 1
fi
limit=$(( recorded + recorded * LIMIT_PERCENT / 100 ))
pct=$(awk -v a="$size" -v b="$recorded" 'BEGIN { printf "%+.1f", (a - b) * 100 / b }')
echo "agent, dev profile, stripped: $size bytes; BENCHMARKS.md records $recorded ($pct %, limit +$LIMIT_PERCENT %)"
if [ "$size" -gt "$limit" ]; then
  echo "FAIL: the agent grew by more than $LIMIT_PERCENT % since BENCHMARKS.md was updated." >&2
  echo "Measure the release size (tests/footprint.sh release), update BENCHMARKS.md, and replace its size-check line with:" >&2
  echo "  $line" >&2
  exit 1
fi
