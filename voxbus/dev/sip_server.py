"""A local livekit-sip: turns SIP calls into participants of rooms on a local livekit-server.

The two share a Redis (their RPC bus): start ``RedisServer``, give its address to the
livekit-server's config (``LiveKitConfig.redis_address``) and to this one. Inside the private
network namespace (``voxbus.dev.netns``) it listens on the veth end, where a SIP phone reaches it.

The binary is ``<repo>/.bin/livekit-sip`` (``scripts/install-sip.sh`` builds it from the Go module
proxy), ``$LIVEKIT_SIP_BIN``, or ``livekit-sip`` on PATH.
"""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Final

from voxbus.dev.child import ChildServer, find_program
from voxbus.dev.livekit_server import REPO, LiveKitServer
from voxbus.runtime.procs import free_port

#: The line livekit-sip logs once its SIP port is open.
_LISTENING: Final = "sip signaling listening on"


def livekit_sip_binary() -> Path:
    return find_program("livekit-sip", REPO / ".bin" / "livekit-sip",
                        env=("LIVEKIT_SIP_BIN", os.environ.get("LIVEKIT_SIP_BIN")),
                        hint="run ./dev setup (scripts/install-sip.sh), or set LIVEKIT_SIP_BIN")


@dataclass(frozen=True, kw_only=True)
class SipConfig:
    ws_url: str
    api_key: str
    api_secret: str
    redis_address: str
    #: The address SIP and RTP are offered on (the veth end inside the namespace).
    node_ip: str = "127.0.0.1"
    sip_port: int = 5060
    rtp_ports: tuple[int, int] = (30000, 30200)
    log_level: str = "info"

    def render(self) -> str:
        lo, hi = self.rtp_ports
        return "\n".join([
            f"api_key: {self.api_key}",
            f"api_secret: {self.api_secret}",
            f"ws_url: {self.ws_url}",
            "redis:",
            f"  address: {self.redis_address}",
            f"sip_port: {self.sip_port}",
            f"rtp_port: {lo}-{hi}",
            "use_external_ip: false",
            # it refuses calls ("cpu exhausted") above 90% CPU by default: on a dev machine the
            # models beside it take that much
            "max_cpu_utilization: 1.0",
            f"nat_1_to_1_ip: {self.node_ip}",
            "logging:",
            f"  level: {self.log_level}",
            "",
        ])


@dataclass
class SipServer(ChildServer):
    """``livekit-sip --config FILE`` as a child process."""

    config: SipConfig
    log_path: Path | None = None
    _proc: Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @classmethod
    def beside(cls, livekit: LiveKitServer, *, log_level: str = "info") -> SipServer:
        """One for ``livekit`` (which must have a Redis), on a free SIP port of its address."""
        lk = livekit.config
        if not lk.redis_address:
            raise ValueError("livekit-sip needs the livekit-server's Redis (redis_address)")
        cfg = SipConfig(ws_url=livekit.url, api_key=lk.api_key, api_secret=lk.api_secret,
                        redis_address=lk.redis_address, node_ip=lk.node_ip,
                        sip_port=free_port(socket.SOCK_DGRAM, lk.node_ip), log_level=log_level)
        return cls(cfg)

    @property
    def sip_address(self) -> str:
        """``host:port`` a phone dials."""
        return f"{self.config.node_ip}:{self.config.sip_port}"

    def _listening(self) -> bool:
        assert self.log_path is not None
        try:
            return _LISTENING in self.log_path.read_text(errors="replace")
        except OSError:
            return False

    def start(self, timeout_s: float = 15.0) -> SipServer:
        binary = livekit_sip_binary()

        def argv(scratch: Path) -> list[str]:
            cfg_file = scratch / "sip.yaml"
            cfg_file.write_text(self.config.render())
            return [str(binary), "--config", str(cfg_file)]

        self._launch(argv, self._listening, what="livekit-sip", log_name="sip.log",
                     timeout_s=timeout_s)
        return self
