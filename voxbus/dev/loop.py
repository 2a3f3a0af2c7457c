"""The whole voice loop on one machine: an embedded nats-server, the STT, LLM and TTS stage
workers as separate processes (as in production) and, with ``livekit=True``, a livekit-server
(loopback config) and the LiveKit bridge process too. Used by ``voxbus demo`` and
``voxbus bench voice``; the callers are in ``voxbus.dev.callers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping

from voxbus.dev import netns
from voxbus.dev.callers import BusCaller, RoomCaller
from voxbus.dev.livekit_server import LiveKitServer
from voxbus.dev.supervise import ChildProcess
from voxbus.ops.nats import EmbeddedNats
from voxbus.runtime.bus import Bus

STAGES = ("stt", "llm", "tts")


class VoiceLoop:
    """NATS + stage worker processes (+ livekit-server and the bridge with ``livekit``);
    ``caller()`` gives a bus session to speak into, ``room_caller()`` a caller in a room."""

    def __init__(self, *, region: str = "demo", echo: bool = True, livekit: bool = False,
                 env: Mapping[str, str] | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.region = region
        self.echo = echo
        self.with_livekit = livekit
        self.extra_env = dict(env or {})
        self.progress = progress or ((lambda s: print(s, flush=True)) if echo else lambda s: None)
        self.server: EmbeddedNats | None = None
        self.bus: Bus | None = None
        self.livekit: LiveKitServer | None = None
        self.stages: list[ChildProcess] = []
        self.bridge: ChildProcess | None = None

    async def start(self, timeout_s: float = 300.0) -> None:
        self.server = await asyncio.to_thread(EmbeddedNats().start)
        self.bus = await Bus.connect(self.server.url, regions=[self.region], name="voice-caller")
        await self.bus.provision()
        self.progress(f"  [nats] ready at {self.server.url}")
        env = {**os.environ, "NATS_URL": self.server.url, "VOXBUS_REGIONS": self.region,
               **self.extra_env}
        self.stages = [ChildProcess(s, env, echo=self.echo) for s in STAGES]
        for s in self.stages:
            await s.start()
        if self.with_livekit:
            lk = LiveKitServer.local(node_ip=netns.node_ip())
            await asyncio.to_thread(lk.start)
            self.livekit = lk
            self.progress(f"  [livekit] ready at {lk.url} in {lk.started_s:.1f} s "
                          f"(RTC on {lk.config.node_ip}:{lk.config.udp_port}/udp)")
            bridge_env = {
                **env, "BRIDGE_LIVEKIT_URL": lk.url, "BRIDGE_API_KEY": lk.config.api_key,
                "BRIDGE_API_SECRET": lk.config.api_secret, "BRIDGE_REGION": self.region,
            }
            self.bridge = ChildProcess("bridge", bridge_env, echo=self.echo,
                                       ready="bridge_started")
            await self.bridge.start()
        procs = [*self.stages, *([self.bridge] if self.bridge else [])]
        await asyncio.gather(*(p.wait_ready(timeout_s) for p in procs))

    async def caller(self, session: str) -> BusCaller:
        assert self.bus is not None
        c = BusCaller(self.bus, self.region, session)
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
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await self.bus.close()
        if self.server is not None:
            self.server.stop()
