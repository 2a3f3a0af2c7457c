#!/usr/bin/env bash
# The telephony parts: Debian's redis-server (livekit-server and livekit-sip share it), baresip
# (a real SIP phone for the tests and the phone demo) and the C libraries livekit-sip links
# (cgo: opus, opusfile, soxr), then livekit-sip itself, built from the Go module proxy into
# <repo>/.bin/livekit-sip. Idempotent: each part is skipped when it is there.
#
# livekit-sip: the proxy serves the module's v1.0.0 (later tags are listed but refused); its
# sum is checked against the one pinned here (the Go checksum database agrees with it), and its
# dependencies against its own go.sum.
set -euo pipefail

SIP_MODULE="github.com/livekit/sip"
SIP_VERSION="${LIVEKIT_SIP_VERSION:-v1.0.0}"
SIP_SUM="h1:o7XEcZHFvaC0R2vqYhGb6aTv9Npe5uLEFhHcDRfPk9U="
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${ROOT}/.bin/livekit-sip"
STAMP="${ROOT}/.bin/livekit-sip.version"
DEBS=(redis-server baresip-core libopus-dev libopusfile-dev libsoxr-dev pkg-config)

missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> ${missing[*]} (Debian), for phone calls"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null &&
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
  else
    echo "error: Debian packages missing and not root: ${missing[*]} (install them, then" \
         "run ./dev setup again)" >&2
    exit 1
  fi
fi

if [[ -x "${BIN}" && "$(cat "${STAMP}" 2>/dev/null)" == "${SIP_VERSION} ${SIP_SUM}" ]]; then
  echo "livekit-sip already installed: ${SIP_VERSION} (${BIN})"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "error: 'go' not found; install Go >= 1.24 to build livekit-sip" >&2
  exit 1
fi

echo "building livekit-sip ${SIP_VERSION} into ${ROOT}/.bin (about a minute)..."
start=$(date +%s)
info="$(go mod download -json "${SIP_MODULE}@${SIP_VERSION}")"
dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"${info}")"
sum="$(sed -n 's/^[[:space:]]*"Sum": "\(.*\)",$/\1/p' <<<"${info}")"
if [[ "${sum}" != "${SIP_SUM}" ]]; then
  echo "error: ${SIP_MODULE}@${SIP_VERSION} has sum ${sum:-none}, expected ${SIP_SUM}" >&2
  exit 1
fi
src="$(mktemp -d)"
trap 'rm -rf "${src}"' EXIT
cp -r "${dir}/." "${src}"
chmod -R u+w "${src}"
mkdir -p "${ROOT}/.bin"
(cd "${src}" && go build -trimpath -o "${BIN}" ./cmd/livekit-sip)
echo "${SIP_VERSION} ${SIP_SUM}" > "${STAMP}"
echo "built livekit-sip ${SIP_VERSION} in $(( $(date +%s) - start ))s: ${BIN}"
