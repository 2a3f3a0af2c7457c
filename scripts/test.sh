#!/usr/bin/env bash
# The whole test suite: everything on real nats-server and real models, then the LiveKit tests
# inside a private network namespace (WebRTC ignores loopback; see the README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

"$PY" -m pytest -q -m "not livekit" "$@"

if [ -d tests/bridge ]; then
  if "$PY" -m services.bridge.netns --check; then
    "$PY" -m services.bridge.netns -- "$PY" -m pytest -q -m livekit tests/bridge "$@"
  else
    echo "LiveKit tests need root and unshare(1) for a private network namespace: not run" >&2
    exit 1
  fi
fi
