"""A local livekit-server for tests and the demo: a loopback-only config and a subprocess.

``--dev --bind 127.0.0.1`` alone still advertises the machine's address, binds RTC ports on its
interfaces and offers public STUN servers; the config rendered here keeps everything on the given
interface. Outside a private network namespace that is ``lo``/``127.0.0.1``; inside one
(``voxbus.dev.netns``) it must be the veth end (clients gather candidates only there).

The binary is ``<repo>/.bin/server`` (``scripts/install-livekit.sh``), ``$LIVEKIT_SERVER_BIN``,
or ``livekit-server`` on PATH.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from voxbus.dev.child import ChildFailed, ChildMissing, ChildServer, find_program
from voxbus.runtime.procs import free_port

REPO: Final = Path(__file__).resolve().parents[2]
DEV_KEY: Final = "devkey"
DEV_SECRET: Final = "voxbus-dev-secret-at-least-32-chars-long"


#: livekit-server exited or never answered.
LiveKitServerError = ChildFailed
#: No livekit-server to run (one line: where it was looked for, how to install it).
LiveKitServerMissing = ChildMissing


def livekit_server_binary() -> Path:
    """``$LIVEKIT_SERVER_BIN`` (when set, it must be the one), else ``<repo>/.bin/server``, else
    ``livekit-server`` on PATH."""
    return find_program("livekit-server", REPO / ".bin" / "server",
                        env=("LIVEKIT_SERVER_BIN", os.environ.get("LIVEKIT_SERVER_BIN")),
                        hint="run ./dev setup (scripts/install-livekit.sh), or set "
                        "LIVEKIT_SERVER_BIN")


@dataclass(frozen=True, kw_only=True)
class LiveKitConfig:
    """What the config file says. ``node_ip``/``interface`` are the address and the interface the
    server gathers RTC candidates on: loopback by default, the veth end inside a namespace."""

    port: int = 7880
    udp_port: int = 7882
    node_ip: str = "127.0.0.1"
    interface: str = "lo"
    api_key: str = DEV_KEY
    api_secret: str = DEV_SECRET
    #: Seconds an empty room lives (rooms are auto-created on join).
    empty_timeout_s: int = 10
    departure_timeout_s: int = 2
    log_level: str = "warn"
    #: ``host:port`` of a Redis shared with livekit-sip (``voxbus.dev.sip_server``); none: the
    #: server runs alone (no SIP).
    redis_address: str = ""

    def render(self) -> str:
        """YAML (written by hand: every value is a plain scalar)."""
        return "\n".join(
            [
                f"port: {self.port}",
                "bind_addresses:",
                "  - 127.0.0.1",
                "rtc:",
                "  tcp_port: 0",
                f"  udp_port: {self.udp_port}",
                "  use_external_ip: false",
                "  enable_loopback_candidate: true",
                f"  node_ip: {self.node_ip}",
                "  interfaces:",
                "    includes:",
                f"      - {self.interface}",
                "  ips:",
                "    includes:",
                f"      - {self.node_ip}/32",
                "  stun_servers:",
                "    - 127.0.0.1:3478",
                "keys:",
                f"  {self.api_key}: {self.api_secret}",
                "room:",
                f"  empty_timeout: {self.empty_timeout_s}",
                f"  departure_timeout: {self.departure_timeout_s}",
                "logging:",
                f"  level: {self.log_level}",
                *(["redis:", f"  address: {self.redis_address}"] if self.redis_address else []),
                "",
            ]
        )


@dataclass
class LiveKitServer(ChildServer):
    """``server --dev --config FILE`` as a child process."""

    config: LiveKitConfig = field(default_factory=LiveKitConfig)
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None
    started_s: float = 0.0

    @classmethod
    def local(cls, *, node_ip: str = "127.0.0.1", interface: str | None = None,
              redis_address: str = "") -> LiveKitServer:
        """A server on free ports; ``interface`` defaults to ``lo`` for loopback, else ``vb0``."""
        iface = interface or ("lo" if node_ip.startswith("127.") else "vb0")
        cfg = LiveKitConfig(
            port=free_port(), udp_port=free_port(socket.SOCK_DGRAM, node_ip),
            node_ip=node_ip, interface=iface, redis_address=redis_address,
        )
        return cls(cfg)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.config.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.config.port}"

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.http_url, timeout=0.5) as r:  # noqa: S310
                return int(r.status) == 200
        except OSError:
            return False

    def start(self, timeout_s: float = 15.0) -> LiveKitServer:
        binary = livekit_server_binary()

        def argv(scratch: Path) -> list[str]:
            cfg_file = scratch / "livekit.yaml"
            cfg_file.write_text(self.config.render())
            return [str(binary), "--dev", "--config", str(cfg_file)]

        t0 = time.monotonic()
        self._launch(argv, self._answers, what="livekit-server", log_name="server.log",
                     timeout_s=timeout_s)
        self.started_s = time.monotonic() - t0
        return self
