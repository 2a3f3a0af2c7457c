#!/usr/bin/env bash
# The whole test suite: everything on a real nats-server and real models, then the LiveKit tests
# with a real livekit-server inside a private network namespace (WebRTC clients ignore loopback;
# see the README). The namespace needs root and unshare(1); --require fails loudly without them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

"$PY" -m pytest -q -m "not livekit" "$@"
"$PY" -m voxbus.dev.netns --require -- "$PY" -m pytest -q -m livekit tests/bridge "$@"
