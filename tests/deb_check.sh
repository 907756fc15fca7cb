#!/usr/bin/env bash
# Builds the agent and hub .deb packages with cargo-deb, checks their contents and maintainer
# scripts, and installs both into a throw-away root with `dpkg --root` (the unit gets enabled
# there, not started, and nothing touches this machine's own systemd or /etc).
#   tests/deb_check.sh                 # release packages (what ships)
#   PROFILE=dev tests/deb_check.sh     # CI: reuses the test build's binaries
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
  cargo install --quiet --locked cargo-deb --version "$CARGO_DEB_VERSION"
fi
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT/var/lib/dpkg/info" "$ROOT/var/lib/dpkg/updates" "$ROOT/var/lib/dpkg/triggers"
touch "$ROOT/var/lib/dpkg/status"
fail() { echo "deb check failed: $*" >&2; exit 1; }
# One workspace build, then cargo-deb packages what it built: left to build each package alone,
# cargo-deb would unify features per package and recompile most dependencies twice.
cargo build --quiet --workspace --bins --profile "$PROFILE"
for c in agent hub; do
  deb=$(cargo deb --quiet --no-build -p "edgefleet-$c" --profile "$PROFILE" 2>/dev/null | tail -n1)
  [ -f "$deb" ] || fail "cargo deb produced no package for $c"
  echo "== $deb ($(stat -c %s "$deb") bytes)"
  contents=$(dpkg-deb -c "$deb")
  for f in ./usr/bin/edgefleet-$c ./etc/edgefleet/$c.toml ./usr/lib/systemd/system/edgefleet-$c.service ./usr/share/doc/edgefleet-$c/README.md; do
    grep -q " $f\$" <<<"$contents" || fail "$c: $f missing from the package"
  done
  [ "$c" = hub ] && { grep -q " ./usr/bin/edgefleet\$" <<<"$contents" || fail "hub: the admin CLI is missing"; }
  [ "$c" = hub ] && { grep -q " ./usr/bin/edgefleet-train\$" <<<"$contents" || fail "hub: the reference trainer is missing"; }
  info=$(dpkg-deb -I "$deb")
  grep -q "/etc/edgefleet/$c.toml" <<<"$(dpkg-deb -f "$deb" Conffiles 2>/dev/null; dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)" || fail "$c: config is not a conffile"
  grep -q "^ Depends:.*libc6" <<<"$info" || fail "$c: no libc6 dependency"
  postinst=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./postinst)
  grep -q "deb-systemd-helper" <<<"$postinst" || fail "$c: postinst does not enable the unit"
  # try-restart on upgrade restarts only a running unit; nothing may start a stopped one.
  if grep -Ev '^ *(echo|#)' <<<"$postinst" | grep -Eq "(systemctl|invoke-rc.d|deb-systemd-invoke) +(--[a-z]+ +)*(start|restart) "; then fail "$c: postinst starts the unit before it is configured"; fi
  # Install into the throw-away root; maintainer scripts run with DPKG_ROOT pointing there.
  dpkg --root="$ROOT" --force-script-chrootless --force-depends --force-not-root --no-triggers -i "$deb" >/dev/null \
    || fail "$c: dpkg --root install failed"
  [ -x "$ROOT/usr/bin/edgefleet-$c" ] || fail "$c: binary not installed"
  [ -L "$ROOT/etc/systemd/system/multi-user.target.wants/edgefleet-$c.service" ] || fail "$c: unit not enabled"
  "$ROOT/usr/bin/edgefleet-$c" --version
  # The packaged default config is not yet valid: check-config names what to set.
  if "$ROOT/usr/bin/edgefleet-$c" check-config --config "$ROOT/etc/edgefleet/$c.toml" >/dev/null 2>&1; then
    fail "$c: the unconfigured default config passes check-config"
  fi
done
dpkg --root="$ROOT" -l | grep -E '^ii +edgefleet-(agent|hub) '
echo "deb packages OK"
