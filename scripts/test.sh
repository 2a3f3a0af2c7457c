#!/usr/bin/env bash
# The whole test suite: ruff and mypy --strict over everything; then everything on a real
# nats-server and real models; then the LiveKit tests with a real livekit-server inside a private
# network namespace (WebRTC clients ignore loopback; see the README). The namespace needs root and unshare(1); --require fails loudly without them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

# Lint and types are part of the tests: a finding fails the command like a failing test.
echo "==> ruff check"
"$PY" -m ruff check .
echo "==> mypy --strict (voxbus and tests)"
"$PY" -m mypy

"$PY" -m pytest -q -m "not livekit" "$@"
"$PY" -m voxbus.dev.netns --require -- "$PY" -m pytest -q -m livekit tests/bridge "$@"
