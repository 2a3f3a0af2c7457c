#!/usr/bin/env bash
# The tests. Lint and types first (ruff, mypy --strict over everything), then:
#   scripts/test.sh        the whole suite (CI): everything on a real nats-server and real models;
#                          then the LiveKit tests with a real livekit-server inside a private
#                          network namespace (WebRTC clients ignore loopback; see the README). The
#                          namespace needs root and unshare(1); --require fails loudly without them.
#   scripts/test.sh fast   the fast tier: the tests marked fast, which need no server and no model
#                          (VOXBUS_TEST_TIER=fast makes starting one fail them; tests/tier.py)
# Further arguments go to pytest (-n 0: one process, e.g. for --pdb).
#
# The tests that need no model run on four workers (pytest-xdist; tests/conftest.py keeps each
# module on one), the fast tier on two: they mostly wait on servers, child processes and
# timeouts, not on the CPU. The tests marked model (inference, with time bounds) then run alone,
# one after another: beside a second worker they missed their bounds on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
WAITING=(-n 4 --dist loadgroup)
FAST=(-n 2 --dist loadgroup)

# A pytest run where "no test selected" (exit 5: ./dev test -k NAME leaves a phase empty) is
# not a failure
some() {
  local rc=0
  "$@" || rc=$?
  [ "$rc" = 0 ] || [ "$rc" = 5 ] || exit "$rc"
}

tier=all
if [ "${1:-}" = fast ]; then
  tier=fast
  shift
fi

# Lint and types are part of the tests: a finding fails the command like a failing test.
echo "==> ruff check"
"$PY" -m ruff check .
echo "==> mypy --strict (voxbus and tests)"
"$PY" -m mypy

if [ "$tier" = fast ]; then
  echo "==> pytest -m fast (no server, no model)"
  VOXBUS_TEST_TIER=fast exec "$PY" -m pytest -q "${FAST[@]}" -m fast "$@"
fi
echo "==> pytest -m 'not model and not livekit' (four workers)"
some "$PY" -m pytest -q "${WAITING[@]}" -m "not model and not livekit" "$@"
echo "==> pytest -m 'model and not livekit' (one at a time)"
some "$PY" -m pytest -q -m "model and not livekit" "$@"
echo "==> pytest -m livekit (a private network namespace)"
some "$PY" -m voxbus.dev.netns --require -- "$PY" -m pytest -q -m livekit tests/bridge "$@"
