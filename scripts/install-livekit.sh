#!/usr/bin/env bash
# Build livekit-server into <repo>/.bin/server (idempotent: skipped when the binary answers
# --version with the wanted version). Needs Go and the Go module proxy; takes ~1.5-2 minutes.
set -euo pipefail

LIVEKIT_VERSION="${LIVEKIT_VERSION:-v1.13.5}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${ROOT}/.bin"
SERVER="${BIN_DIR}/server"

if [[ -x "${SERVER}" ]] && out="$("${SERVER}" --version 2>&1)" \
    && [[ "${out}" == *"${LIVEKIT_VERSION#v}"* ]]; then
  echo "livekit-server already installed: ${out} (${SERVER})"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "error: 'go' not found; install Go >= 1.23 to build livekit-server" >&2
  exit 1
fi

mkdir -p "${BIN_DIR}"
echo "building livekit-server ${LIVEKIT_VERSION} into ${BIN_DIR} (about 2 minutes)..."
start=$(date +%s)
GOBIN="${BIN_DIR}" go install "github.com/livekit/livekit-server/cmd/server@${LIVEKIT_VERSION}"
echo "built $("${SERVER}" --version 2>&1) in $(( $(date +%s) - start ))s: ${SERVER}"
