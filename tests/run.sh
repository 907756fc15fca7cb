#!/usr/bin/env bash
# The README's test command: makes sure the system tools the tests drive are installed, then
# runs every test of the workspace.
#
#   tests/run.sh                 # all tests
#   tests/run.sh -p edgefleet-common       # extra arguments go to `cargo test`
#
# What the tests need besides Rust, and why:
#   faketime         the clock-jump test runs the agent under libfaketime
#   mosquitto        the telemetry tests start and restart a real Mosquitto broker
#   systemd          systemd-analyze verifies and scores the hardened units
#   curl, python3    the quick-start script (run end to end by a test) uses both
# Each is installed only when missing (Debian packages, as root; run again, it does nothing).
# Not root and something missing: it says what to install and stops, rather than letting a
# test fail for a reason that has nothing to do with the code.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
why=()
want() { # package reason present?
  if ! eval "$3" >/dev/null 2>&1; then
    need+=("$1")
    why+=("  $1: $2")
  fi
}
want faketime "the clock-jump test runs the agent under libfaketime" \
  'ls /usr/lib/*/faketime/libfaketimeMT.so.1 /usr/lib/faketime/libfaketimeMT.so.1 2>/dev/null | grep -q .'
want mosquitto "the telemetry tests start and restart a real Mosquitto broker" \
  '[ -x /usr/sbin/mosquitto ] || command -v mosquitto'
want systemd "systemd-analyze verifies and scores the hardened units" 'command -v systemd-analyze'
want curl "the quick-start script calls the agent with curl" 'command -v curl'
want python3 "the quick-start script picks a free port with python3" 'command -v python3'

if [ ${#need[@]} -gt 0 ]; then
  echo "==> the tests need these system packages, which are missing:"
  printf '%s\n' "${why[@]}"
  if [ "$(id -u)" != 0 ]; then
    echo "run as root, or install them first: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
  echo "==> apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends: the tests need the tools, not a mail server or a desktop.
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The interop test also uses the machine's own broker on 127.0.0.1:1883 (this kind of machine
# runs one; it skips, saying so, when none answers): start it when it is installed but stopped.
if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null && [ "$(id -u)" = 0 ]; then
  echo "==> starting Mosquitto on 127.0.0.1:1883 for the interop test"
  if [ -f /etc/mosquitto/mosquitto.conf ]; then
    start=(mosquitto -d -c /etc/mosquitto/mosquitto.conf)
  else
    start=(mosquitto -d -p 1883)
  fi
  # A failed start is reported below, with what to do, rather than by `set -e` alone.
  "${start[@]}" || echo "==> ${start[*]} exited with status $?" >&2
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null && break; sleep 0.1; done
  if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
    cat >&2 <<EOF_MSG
==> Mosquitto does not answer on 127.0.0.1:1883 five seconds after \`${start[*]}\`.
    The interop test needs a broker there. Check that nothing else holds port 1883
    (ss -ltnp 'sport = :1883'), that the configuration has a listener on 1883 for
    127.0.0.1 (/etc/mosquitto/mosquitto.conf and conf.d/), and Mosquitto's log
    (/var/log/mosquitto/mosquitto.log, or run \`mosquitto -v -p 1883\` in the foreground
    to see why it stops). Then run tests/run.sh again.
EOF_MSG
    exit 1
  fi
fi

# --no-fail-fast: one failing test binary must not hide what the others would say.
exec cargo test --workspace --no-fail-fast "$@"
