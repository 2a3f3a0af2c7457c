#!/usr/bin/env bash
# What the deployment checks need, all from the Go module proxy (idempotent):
#   .bin/helm                          helm, built with go install (a few minutes the first time)
#   .bin/keda/keda.sh_scaledobjects.yaml   KEDA's ScaledObject CRD (its schema), out of the
#                                      kedacore/keda module's source zip, sha256 checked
set -euo pipefail

# helm v3.21.4: v3.22.0 is served by the proxy but not approved on these machines
HELM_VERSION="${HELM_VERSION:-v3.21.4}"
KEDA_VERSION="${KEDA_VERSION:-v2.18.1}"
KEDA_CRD_SHA256="${KEDA_CRD_SHA256:-44e8d3444bb884ed5c8dc4f1b118944a54fe9c81534048793c20b9394ae1de2c}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${ROOT}/.bin"
HELM="${BIN_DIR}/helm"
CRD_DIR="${BIN_DIR}/keda"
CRD="${CRD_DIR}/keda.sh_scaledobjects.yaml"

if ! command -v go >/dev/null 2>&1; then
  echo "error: 'go' not found; install Go to build helm and fetch KEDA's CRD" >&2
  exit 1
fi
mkdir -p "${BIN_DIR}"

# a go-installed helm reports only "v3.21": the version built is kept in a stamp beside it
if [[ -x "${HELM}" ]] && [[ "$(cat "${HELM}.version" 2>/dev/null)" == "${HELM_VERSION}" ]]; then
  echo "helm already installed: ${HELM_VERSION} (${HELM})"
else
  echo "building helm ${HELM_VERSION} into ${BIN_DIR} (a few minutes)..."
  start=$(date +%s)
  GOBIN="${BIN_DIR}" go install "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
  echo "${HELM_VERSION}" > "${HELM}.version"
  echo "built helm ${HELM_VERSION} in $(( $(date +%s) - start ))s: ${HELM}"
fi

if [[ -f "${CRD}" ]] && [[ "$(cat "${CRD_DIR}/version" 2>/dev/null)" == "${KEDA_VERSION}" ]]; then
  echo "KEDA ScaledObject CRD already there: ${KEDA_VERSION} (${CRD})"
else
  echo "fetching KEDA ${KEDA_VERSION}'s ScaledObject CRD (the module's source zip, ~3 MB)..."
  # the module's go.mod may ask for a newer Go than this one: only its zip is wanted, and
  # go mod download writes the zip before it says so
  zip=$(cd "${BIN_DIR}" && GOFLAGS=-mod=mod go mod download -json \
          "github.com/kedacore/keda/v2@${KEDA_VERSION}" 2>/dev/null |
        sed -n 's/^[[:space:]]*"Zip": "\(.*\)",$/\1/p')
  if [[ -z "${zip}" || ! -f "${zip}" ]]; then
    echo "error: could not download github.com/kedacore/keda/v2@${KEDA_VERSION}" >&2
    exit 1
  fi
  mkdir -p "${CRD_DIR}"
  python3 - "${zip}" "github.com/kedacore/keda/v2@${KEDA_VERSION}/config/crd/bases/keda.sh_scaledobjects.yaml" "${CRD}.tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[3], "wb") as out:
    out.write(z.read(sys.argv[2]))
PY
  echo "${KEDA_CRD_SHA256}  ${CRD}.tmp" | sha256sum -c --quiet ||
    { echo "error: KEDA's CRD does not have the pinned sha256" >&2; exit 1; }
  mv "${CRD}.tmp" "${CRD}"
  echo "${KEDA_VERSION}" > "${CRD_DIR}/version"
  echo "KEDA ScaledObject CRD: ${CRD} (sha256 $(sha256sum "${CRD}" | cut -d' ' -f1))"
fi
