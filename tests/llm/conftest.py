"""Fixtures for the LLM engine tests: the SmolLM2 GGUF and a real ``llama_cpp.server``."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from voxbus.runtime.procs import free_port, stop_popen
from voxbus.services.llm.llama_engine import LlamaCppEngine, default_model_path

SERVER_READY_TIMEOUT_S = 60.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "model: loads a real model (slow)")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    try:
        return default_model_path()
    except Exception as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"SmolLM2 GGUF unavailable: {exc}")


@pytest.fixture
async def llama_engine(smollm2_path: Path) -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(model_path=smollm2_path, n_threads=1, temperature=0.0, max_tokens=64)
    try:
        yield engine
    finally:
        await engine.aclose()


@pytest.fixture(scope="session")
def llama_server(smollm2_path: Path) -> Iterator[str]:
    """``python -m llama_cpp.server`` on a free loopback port, chatml-function-calling format."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(smollm2_path),
        "--chat_format", "chatml-function-calling",
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "1",
    ]  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
        with httpx.Client(timeout=1.0) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"llama_cpp.server exited {proc.returncode}; see {log.name}")
                try:
                    if client.get(f"{base_url}/v1/models").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"llama_cpp.server not ready; see {log.name}")
                time.sleep(0.1)
        yield base_url
    finally:
        stop_popen(proc, timeout_s=10)
        log.close()
        os.unlink(log.name)
