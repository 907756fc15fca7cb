#!/usr/bin/env bash
# The agent's engine against native onnxruntime, batch 1 and 64, every ONNX-ML fixture, in
# alternating rounds (tests/benches/onnx_ort.rs prints the table).
#
#   tools/ort_bench.sh                        # ROUNDS=3 BATCHES=1,64 BENCH_MS=300
#   FIXTURES=logreg_binary,gbr BATCHES=1 tools/ort_bench.sh
#
# onnxruntime is the library that the onnxruntime wheel pinned in tools/fixtures/requirements.txt
# ships (onnxruntime/capi/libonnxruntime.so.<version>): the same build the fixtures' expected
# outputs came from. pip fetches the wheel once from PyPI into target/onnxruntime; nothing is
# downloaded when the bench builds or runs.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(sed -nE 's/^onnxruntime==([0-9.]+).*/\1/p' tools/fixtures/requirements.txt)
[ -n "$VERSION" ] || { echo "no onnxruntime pin in tools/fixtures/requirements.txt" >&2; exit 1; }
DIR=target/onnxruntime/$VERSION
LIB=$DIR/onnxruntime/capi/libonnxruntime.so.$VERSION
if [ ! -f "$LIB" ]; then
  echo "==> fetching the onnxruntime $VERSION wheel (PyPI) for its libonnxruntime.so"
  mkdir -p "$DIR"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --dest "$DIR" "onnxruntime==$VERSION"
  # A wheel is a zip: take the shared library only.
  python3 - "$DIR" "$LIB" <<'PY'
import glob, sys, zipfile
dest, lib = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{dest}/onnxruntime-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    z.extract(lib[len(dest) + 1:], dest)
PY
fi
ORT_DYLIB_PATH=$PWD/$LIB exec cargo bench --profile release -p edgefleet-tests --bench onnx_ort
