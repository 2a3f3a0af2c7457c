"""A throwaway Redis for livekit-server and livekit-sip to share (their RPC bus): loopback only,
nothing saved to disk. Debian's ``redis-server`` (``./dev setup`` installs it)."""

from __future__ import annotations

import contextlib
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen

from voxbus.dev.child import find_program, start_child
from voxbus.runtime.procs import free_port, stop_popen


@dataclass
class RedisServer:
    port: int = field(default_factory=free_port)
    _proc: Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> RedisServer:
        binary = find_program("redis-server", hint="run ./dev setup, or install Debian's "
                              "redis-server (livekit-server and livekit-sip share it)")
        self._tmp = tempfile.TemporaryDirectory(prefix="voxbus-redis-")
        argv = [str(binary), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self._tmp.name]
        try:
            self._proc = start_child(argv, Path(self._tmp.name) / "redis.log", self._answers,
                                     what="redis-server")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_popen(self._proc)
        self._proc = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RedisServer:
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
