"""The whole voice loop on one machine: an embedded nats-server, the STT, LLM and TTS stage
workers as separate processes (as in production) and, with ``livekit=True``, a livekit-server
(loopback config) and the LiveKit bridge process too. Used by ``voxbus demo`` and
``voxbus bench voice``; the callers are in ``voxbus.dev.callers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from voxbus.dev import netns
from voxbus.dev.callers import BusCaller, RoomCaller
from voxbus.dev.livekit_server import LiveKitServer
from voxbus.dev.supervise import ChildProcess
from voxbus.ops.auth import Identities, server_config
from voxbus.ops.nats import EmbeddedNats
from voxbus.runtime.bus import Bus

STAGES = ("stt", "llm", "tts")


class VoiceLoop:
    """NATS + stage worker processes (+ livekit-server and the bridge with ``livekit``);
    ``caller()`` gives a bus session to speak into, ``room_caller()`` a caller in a room.

    With ``secure`` the server requires the identities of ``voxbus nats --secure``: each
    process logs in as its own role (``VOXBUS_CREDENTIALS``), the harness watches as the
    operator, and a bus caller speaks as the bridge."""

    def __init__(self, *, region: str = "demo", echo: bool = True, livekit: bool = False,
                 env: Mapping[str, str] | None = None, secure: bool = False,
                 progress: Callable[[str], None] | None = None) -> None:
        self.region = region
        self.secure = secure
        self.identities: Identities | None = None
        self._creds_dir: tempfile.TemporaryDirectory[str] | None = None
        self._speaker: Bus | None = None
        self.echo = echo
        self.with_livekit = livekit
        self.extra_env = dict(env or {})
        self.progress = progress or ((lambda s: print(s, flush=True)) if echo else lambda s: None)
        self.server: EmbeddedNats | None = None
        self.bus: Bus | None = None
        self.livekit: LiveKitServer | None = None
        self.stages: list[ChildProcess] = []
        self.bridge: ChildProcess | None = None

    def _identity_env(self, role: str) -> dict[str, str]:
        if self.identities is None:
            return {}
        return {"VOXBUS_CREDENTIALS": str(self.identities.path(f"{role}-{self.region}"))}

    async def _connect(self, role: str, name: str) -> Bus:
        assert self.server is not None
        ident = self.identities.get(role, self.region) if self.identities else None
        return await Bus.connect(self.server.url, regions=[self.region], name=name,
                                 user=ident.user if ident else None,
                                 password=ident.password if ident else None,
                                 inbox_prefix=ident.inbox_prefix if ident else None)

    async def start(self, timeout_s: float = 300.0) -> None:
        conf: Path | None = None
        if self.secure:
            self._creds_dir = tempfile.TemporaryDirectory(prefix="voxbus-identities-")
            self.identities = Identities.load_or_create(Path(self._creds_dir.name),
                                                        [self.region])
            conf = Path(self._creds_dir.name) / "auth.conf"
            conf.write_text(server_config(self.identities))
        self.server = await asyncio.to_thread(EmbeddedNats(config_file=conf).start)
        self.bus = await self._connect("operator", "voice-caller")
        await self.bus.provision()
        if self.secure:
            self._speaker = await self._connect("bridge", "voice-caller-speaker")
        self.progress(f"  [nats] ready at {self.server.url}")
        env = {**os.environ, "NATS_URL": self.server.url, "VOXBUS_REGIONS": self.region,
               **self.extra_env}
        self.stages = [ChildProcess(s, {**env, **self._identity_env(s)}, echo=self.echo)
                       for s in STAGES]
        for s in self.stages:
            await s.start()
        if self.with_livekit:
            lk = LiveKitServer.local(node_ip=netns.node_ip())
            await asyncio.to_thread(lk.start)
            self.livekit = lk
            self.progress(f"  [livekit] ready at {lk.url} in {lk.started_s:.1f} s "
                          f"(RTC on {lk.config.node_ip}:{lk.config.udp_port}/udp)")
            bridge_env = {
                **env, **self._identity_env("bridge"), "BRIDGE_LIVEKIT_URL": lk.url,
                "BRIDGE_API_KEY": lk.config.api_key,
                "BRIDGE_API_SECRET": lk.config.api_secret, "BRIDGE_REGION": self.region,
            }
            self.bridge = ChildProcess("bridge", bridge_env, echo=self.echo,
                                       ready="bridge_started")
            await self.bridge.start()
        procs = [*self.stages, *([self.bridge] if self.bridge else [])]
        await asyncio.gather(*(p.wait_ready(timeout_s) for p in procs))

    async def caller(self, session: str) -> BusCaller:
        assert self.bus is not None
        c = BusCaller(self.bus, self.region, session, speaker=self._speaker)
        await c.subscribe()
        return c

    async def room_caller(self, room: str, identity: str = "caller") -> RoomCaller:
        return await RoomCaller.connect(self, room, identity)

    async def stop(self) -> None:
        if self.bridge is not None:
            await self.bridge.stop()
        await asyncio.gather(*(s.stop() for s in self.stages))
        if self.livekit is not None:
            await asyncio.to_thread(self.livekit.stop)
        for bus in (self._speaker, self.bus):
            if bus is not None:
                with contextlib.suppress(Exception):
                    await bus.close()
        if self.server is not None:
            self.server.stop()
        if self._creds_dir is not None:
            self._creds_dir.cleanup()
