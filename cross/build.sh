#!/usr/bin/env bash
# Builds edgefleet-agent for ARM devices and as a static musl binary, with the Rust toolchain's
# own targets (rustup) and Debian's cross linkers — no containers.
#
#   cross/build.sh                         # all targets, release profile
#   cross/build.sh aarch64-unknown-linux-gnu
#   PROFILE=release-default cross/build.sh aarch64-unknown-linux-gnu
#
# As root it installs what is missing (apt-get: gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf,
# musl-tools, qemu-user). Prints each binary's stripped size. cross/run-qemu.sh runs the aarch64
# agent under qemu-user against a real hub.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf x86_64-unknown-linux-musl)

need_pkgs=()
for t in "${TARGETS[@]}"; do
  case $t in
    aarch64-unknown-linux-gnu) command -v aarch64-linux-gnu-gcc >/dev/null || need_pkgs+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross) ;;
    armv7-unknown-linux-gnueabihf) command -v arm-linux-gnueabihf-gcc >/dev/null || need_pkgs+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross) ;;
    x86_64-unknown-linux-musl) command -v musl-gcc >/dev/null || need_pkgs+=(musl-tools) ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    echo "missing cross toolchains; install: apt-get install ${need_pkgs[*]}" >&2; exit 1
  fi
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc
export CC_x86_64_unknown_linux_musl=musl-gcc

for t in "${TARGETS[@]}"; do
  rustup target list --installed | grep -qx "$t" || rustup target add "$t"
  echo "== $t ($PROFILE)"
  cargo build --quiet --profile "$PROFILE" --target "$t" -p edgefleet-agent --bin edgefleet-agent
  out="target/$t/$PROFILE/edgefleet-agent"
  printf '%-32s %s  %.2f MiB\n' "$t" "$out" "$(echo "$(stat -c %s "$out") / 1048576" | bc -l)"
done
