"""The whole voice loop on one machine: an embedded nats-server, the STT, LLM and TTS stage
workers as separate processes (as in production) and, with ``livekit=True``, a livekit-server
(loopback config) and the LiveKit bridge process too. Used by ``voxbus demo`` and
``voxbus bench voice``; the callers are in ``voxbus.dev.callers``. With ``tools``, a ``voxbus
tools MODULE`` worker per module too, which publishes the module's agents to the region (the
harness publishes them as the operator when the servers are secure); a caller then names the
agent it talks to (``room_caller(..., agent=)``, ``caller(..., agent=)``).

With several ``regions`` and a ``cluster_size``, NATS is a supercluster (one cluster per region,
``ops.supercluster``) and every process serves all regions, each on its own region's servers
(``NATS_URL_<REGION>``); ``gateway_links`` puts a cuttable link (``dev.links``) in front of
every gateway. With ``phone`` (and ``livekit``), a Redis and livekit-sip beside livekit-server,
the bridge joining every room with a caller, and ``PHONE_NUMBER`` answered (``ops.sip``): a SIP
phone calls in (``voxbus.dev.phone_caller``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from voxbus.contracts.messages import SessionStarted
from voxbus.dev import netns
from voxbus.dev.callers import BusCaller, RoomCaller
from voxbus.dev.links import Link, link_gateways
from voxbus.dev.livekit_server import LiveKitServer
from voxbus.dev.redis_server import RedisServer
from voxbus.dev.sip_server import SipServer
from voxbus.dev.supervise import ChildProcess, LoopError
from voxbus.ops.auth import Identities, server_config
from voxbus.ops.nats import EmbeddedNats
from voxbus.ops.supercluster import Supercluster
from voxbus.runtime.bus import Bus
from voxbus.runtime.settings import region_env_suffix

STAGES = ("stt", "llm", "tts")
#: The number the loop's phone calls (``phone``).
PHONE_NUMBER = "+15550100"


class VoiceLoop:
    """NATS + stage worker processes (+ livekit-server and the bridge with ``livekit``);
    ``caller()`` gives a bus session to speak into, ``room_caller()`` a caller in a room.

    With ``secure`` the server requires the identities of ``voxbus nats --secure``: each
    process logs in as its own role (``VOXBUS_CREDENTIALS``), the harness watches as the
    operator, and a bus caller speaks as the bridge."""

    def __init__(self, *, region: str = "demo", echo: bool = True, livekit: bool = False,
                 env: Mapping[str, str] | None = None, secure: bool = False,
                 progress: Callable[[str], None] | None = None,
                 regions: Sequence[str] = (), cluster_size: int = 0,
                 gateway_links: bool = False, tools: Sequence[str] = (),
                 phone: bool = False) -> None:
        #: The first region is the bridge's default (``BRIDGE_REGION``).
        self.regions = list(regions) or [region]
        self.region = self.regions[0]
        self.cluster_size = cluster_size
        self.gateway_links = gateway_links
        self.cluster: Supercluster | None = None
        self.links: dict[str, Link] = {}
        self.buses: dict[str, Bus] = {}
        self.speakers: dict[str, Bus] = {}
        self.secure = secure
        self.identities: Identities | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
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
        #: Modules whose tools run in a ``voxbus tools`` worker each (and whose agents are
        #: published to every region).
        self.tools = list(tools)
        self.with_phone = phone and livekit
        self.redis: RedisServer | None = None
        self.sip: SipServer | None = None

    def url(self, region: str | None = None) -> str:
        """The servers of ``region`` (default: the first), comma-separated."""
        if self.cluster is not None:
            return self.cluster.url(region or self.region)
        assert self.server is not None
        return self.server.url

    def _identity_env(self, role: str) -> dict[str, str]:
        if self.identities is None:
            return {}
        if len(self.regions) == 1:
            return {"VOXBUS_CREDENTIALS": str(self.identities.path(f"{role}-{self.region}"))}
        return {f"VOXBUS_CREDENTIALS_{region_env_suffix(r)}":
                str(self.identities.path(f"{role}-{r}")) for r in self.regions}

    async def connect(self, role: str, name: str, region: str | None = None) -> Bus:
        """A connection to ``region``'s servers, as ``role`` when the servers are secure."""
        region = region or self.region
        ident = self.identities.get(role, region) if self.identities else None
        return await Bus.connect(self.url(region), regions=[region], name=name,
                                 user=ident.user if ident else None,
                                 password=ident.password if ident else None,
                                 inbox_prefix=ident.inbox_prefix if ident else None)

    async def _start_nats(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="voxbus-loop-")
        base = Path(self._dir.name)
        auth = ""
        if self.secure:
            self.identities = Identities.load_or_create(base / "credentials", self.regions)
            auth = server_config(self.identities)
        if not self.cluster_size:
            conf: Path | None = None
            if auth:
                conf = base / "auth.conf"
                conf.write_text(auth)
            self.server = await asyncio.to_thread(EmbeddedNats(config_file=conf).start)
            self.progress(f"  [nats] ready at {self.server.url}")
            return
        cluster = Supercluster(self.regions, self.cluster_size, base / "nats", auth_config=auth)
        if self.gateway_links:
            self.links = link_gateways(cluster)
        self.cluster = cluster
        await asyncio.to_thread(cluster.start)
        for r in self.regions:
            self.progress(f"  [nats] {cluster.env_line(r)}")

    async def start(self, timeout_s: float = 300.0) -> None:
        await self._start_nats()
        for r in self.regions:
            self.buses[r] = bus = await self.connect("operator", f"voice-caller-{r}", r)
            await bus.provision()
            if self.secure:
                self.speakers[r] = await self.connect("bridge", f"voice-caller-speaker-{r}", r)
        self.bus = self.buses[self.region]
        self._speaker = self.speakers.get(self.region)
        env = {**os.environ, "NATS_URL": self.url(), "VOXBUS_REGIONS": ",".join(self.regions),
               **({f"NATS_URL_{region_env_suffix(r)}": self.url(r) for r in self.regions}
                  if self.cluster else {}),
               **self.extra_env}
        self.stages = [ChildProcess(s, {**env, **self._identity_env(s)}, echo=self.echo)
                       for s in STAGES]
        self.stages += [ChildProcess("tools", {**env, **self._identity_env("tools")},
                                     echo=self.echo, args=[module]) for module in self.tools]
        for s in self.stages:
            await s.start()
        if self.with_livekit:
            redis = ""
            if self.with_phone:
                self.redis = await asyncio.to_thread(RedisServer().start)
                redis = self.redis.address
            lk = LiveKitServer.local(node_ip=netns.node_ip(), redis_address=redis)
            await asyncio.to_thread(lk.start)
            self.livekit = lk
            self.progress(f"  [livekit] ready at {lk.url} in {lk.started_s:.1f} s "
                          f"(RTC on {lk.config.node_ip}:{lk.config.udp_port}/udp)")
            bridge_env = {
                **env, **self._identity_env("bridge"), "BRIDGE_LIVEKIT_URL": lk.url,
                "BRIDGE_API_KEY": lk.config.api_key,
                "BRIDGE_API_SECRET": lk.config.api_secret, "BRIDGE_REGION": self.region,
            }
            if self.with_phone:
                self.sip = await asyncio.to_thread(SipServer.beside(lk).start)
                self.progress(f"  [sip] livekit-sip ready at {self.sip.sip_address} (Redis "
                              f"{redis})")
                bridge_env.update(BRIDGE_AUTO_JOIN="1", BRIDGE_POLL_S="0.2")
            self.bridge = ChildProcess("bridge", bridge_env, echo=self.echo,
                                       ready="bridge_started")
            await self.bridge.start()
        procs = [*self.stages, *([self.bridge] if self.bridge else [])]
        await asyncio.gather(*(p.wait_ready(timeout_s) for p in procs))
        if self.tools and self.secure:  # a tools identity may not publish agents
            await self._publish_agents()

    async def answer_number(self, agent: str = "") -> str:
        """``PHONE_NUMBER`` answered by ``agent`` (``voxbus sip``); the URI a phone dials."""
        from livekit import api

        from voxbus.ops.sip import PhoneNumber, SipConfig, provision

        assert self.livekit is not None and self.sip is not None, "start(phone=True) first"
        lk = self.livekit
        client = api.LiveKitAPI(lk.http_url, lk.config.api_key, lk.config.api_secret)
        try:
            for line in await provision(client, SipConfig([PhoneNumber(PHONE_NUMBER, agent)])):
                self.progress(f"  [sip] {line}")
        finally:
            await client.aclose()
        return f"sip:{PHONE_NUMBER}@{self.sip.sip_address}"

    async def _publish_agents(self) -> None:
        from voxbus.agents.loader import load
        from voxbus.agents.registry import AgentRegistry
        from voxbus.contracts.streams import agents_bucket

        for module in self.tools:
            loaded = load(module)
            definitions = [a.definition(module) for a in loaded.agents.values()]
            for region, bus in self.buses.items():
                await AgentRegistry(await bus.kv(agents_bucket(region))).publish(definitions)

    async def caller(self, session: str, region: str | None = None,
                     agent: str = "") -> BusCaller:
        """A session spoken into over the bus; with ``agent``, it starts (``SessionStarted``)
        talking to that agent, as the bridge would start it."""
        region = region or self.region
        c = BusCaller(self.buses[region], region, session, speaker=self.speakers.get(region))
        await c.subscribe()
        if agent:
            await c.speaker.publish(region, SessionStarted(session=session, agent=agent,
                                                           at_ns=time.time_ns()))
        return c

    async def room_caller(self, room: str, identity: str = "caller",
                          region: str | None = None, agent: str = "") -> RoomCaller:
        """A caller in ``room``; with ``agent``, the agent is dispatched into the room as that
        agent first (a bridge that refuses says why: ``LoopError``)."""
        if agent:
            await self.dispatch(room, region=region, agent=agent)
        return await RoomCaller.connect(self, room, identity, region=region)

    async def dispatch(self, room: str, *, region: str | None = None, agent: str = "",
                       timeout_s: float = 20.0) -> None:
        """``voxbus dispatch ROOM --region R --agent A``, as the operator."""
        from voxbus.services.bridge.dispatch import request_dispatch

        region = region or self.region
        op = self.identities.get("operator", region) if self.identities else None
        answer = await request_dispatch(room, nats_url=self.url(region), region=region,
                                        timeout_s=timeout_s, agent=agent,
                                        user=op.user if op else None,
                                        password=op.password if op else None,
                                        inbox_prefix=op.inbox_prefix if op else None)
        if not answer.ok:
            raise LoopError(f"the bridge did not join room {room!r}: {answer.error}")

    async def stop(self) -> None:
        if self.bridge is not None:
            await self.bridge.stop()
        await asyncio.gather(*(s.stop() for s in self.stages))
        if self.sip is not None:
            await asyncio.to_thread(self.sip.stop)
        if self.livekit is not None:
            await asyncio.to_thread(self.livekit.stop)
        if self.redis is not None:
            await asyncio.to_thread(self.redis.stop)
        for bus in [*self.speakers.values(), *self.buses.values()]:
            with contextlib.suppress(Exception):
                await bus.close()
        if self.server is not None:
            self.server.stop()
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.stop)
        for link in self.links.values():
            link.stop()
        if self._dir is not None:
            self._dir.cleanup()
