"""A throwaway Redis for livekit-server and livekit-sip to share (their RPC bus): loopback only,
nothing saved to disk. Debian's ``redis-server`` (``./dev setup`` installs it)."""

from __future__ import annotations

import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen

from voxbus.dev.child import ChildServer, find_program
from voxbus.runtime.procs import free_port


@dataclass
class RedisServer(ChildServer):
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
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

    def start(self, timeout_s: float = 15.0) -> RedisServer:
        binary = find_program("redis-server", hint="run ./dev setup, or install Debian's "
                              "redis-server (livekit-server and livekit-sip share it)")

        def argv(scratch: Path) -> list[str]:
            return [str(binary), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", str(scratch)]

        self._launch(argv, self._answers, what="redis-server", log_name="redis.log",
                     timeout_s=timeout_s)
        return self
