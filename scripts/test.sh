#!/usr/bin/env bash
# The tests. Lint and types first (ruff, mypy --strict over everything), then:
#   scripts/test.sh        the whole suite (CI): everything on a real nats-server and real models;
#                          then the LiveKit tests with a real livekit-server inside a private
#                          network namespace (WebRTC clients ignore loopback; see the README). The
#                          namespace needs root and unshare(1); --require fails loudly without them.
#   scripts/test.sh fast   the fast tier: the tests marked fast, which need no server and no model
#                          (VOXBUS_TEST_TIER=fast makes starting one fail them; tests/tier.py)
# Further arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

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
  VOXBUS_TEST_TIER=fast exec "$PY" -m pytest -q -m fast "$@"
fi
"$PY" -m pytest -q -m "not livekit" "$@"
"$PY" -m voxbus.dev.netns --require -- "$PY" -m pytest -q -m livekit tests/bridge "$@"
