"""The bridge service: puts the agent into LiveKit rooms and connects each caller to the bus.

Rooms are joined on request (``Bridge.dispatch(room)``, also reachable over NATS: see
``services.bridge.dispatch``) and, with ``BRIDGE_AUTO_JOIN``, whenever the RoomService lists a
room with participants that the agent is not in.

One bridge serves the rooms of every region it has a connection for (one per region, to that
region's servers): a room's region is chosen when the agent is dispatched (``routing``) and its
sessions live there; a room of a region it does not serve is refused with an error event. Which
agent the room's callers talk to is chosen then too (``agents``): an agent that is not published
in the room's region is refused before the bridge joins.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import msgspec
import structlog
from livekit import api
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from voxbus.contracts.control import (
    DISPATCH_QUEUE,
    CallReply,
    DispatchReply,
    call_subject,
    decode_call_request,
    decode_dispatch_request,
    dispatch_subject,
    encode_json,
)
from voxbus.contracts.subjects import tombstone_subject
from voxbus.runtime.bus import Bus
from voxbus.runtime.tasks import TaskSet
from voxbus.services.bridge.agents import (
    AgentChoice,
    AgentRefused,
    check_published,
    choose_agent,
    metadata_agent,
)
from voxbus.services.bridge.dial import place_call
from voxbus.services.bridge.room import RoomAgent
from voxbus.services.bridge.routing import Caller, RegionRefused, RegionRouter, Route
from voxbus.services.bridge.session import caller_session_id
from voxbus.services.bridge.settings import BridgeSettings

log = structlog.get_logger("voxbus.bridge")

class BridgeError(RuntimeError):
    pass


class Bridge:
    def __init__(self, buses: Bus | Mapping[str, Bus], settings: BridgeSettings) -> None:
        """``buses``: a connection per served region (or one connection for all of its
        regions); ``BRIDGE_REGION`` must be one of them."""
        settings.require_credentials()
        self.buses: dict[str, Bus] = (
            dict.fromkeys(buses.regions, buses) if isinstance(buses, Bus) else dict(buses))
        if settings.region not in self.buses:
            raise BridgeError(f"BRIDGE_REGION={settings.region!r} is not served by the bus "
                              f"({', '.join(self.buses)})")
        self.bus = self.buses[settings.region]
        self.s = settings
        self.router = RegionRouter(list(self.buses), settings.region, settings.region_map)
        self.rooms: dict[str, RoomAgent] = {}
        self._joining: dict[str, asyncio.Future[RoomAgent]] = {}
        self._tasks = TaskSet("bridge")
        self._subs: list[Subscription] = []
        self._api: api.LiveKitAPI | None = None

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        for region, bus in self.buses.items():
            self._subs.append(await bus.nc.subscribe(
                dispatch_subject(region), queue=DISPATCH_QUEUE, cb=self._on_dispatch))
            self._subs.append(await bus.nc.subscribe(
                call_subject(region), queue=DISPATCH_QUEUE, cb=self._on_call))
            self._subs.append(await bus.nc.subscribe(tombstone_subject(region),
                                                     cb=self._on_tombstone))
        if self.s.auto_join:
            self._tasks.spawn(self._auto_join(), name="auto-join")
        log.info("bridge_started", livekit=self.s.livekit_url, region=self.s.region,
                 regions=list(self.buses), auto_join=self.s.auto_join)

    def readiness(self) -> str | None:
        """Ready while every region's connection is up (a dispatch can be answered)."""
        down = [r for r, bus in self.buses.items() if not bus.nc.is_connected]
        if not self._subs:
            return "not started"
        return f"no connection to region(s) {', '.join(down)}" if down else None

    async def _on_tombstone(self, raw: Msg) -> None:
        """A session is being purged: a caller of it in one of our rooms is no longer heard or
        answered, and nothing more is written for it (the call itself goes on)."""
        session = raw.data.decode(errors="replace")
        region = raw.subject.split(".")[1]
        for agent in list(self.rooms.values()):
            for sess in list(agent.sessions.values()):
                if sess.id == session and agent.region == region:
                    self._tasks.spawn(sess.purge(), name=f"purge-{session}")

    async def close(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            await sub.unsubscribe()
        await self._tasks.close()
        await asyncio.gather(*(r.close("bridge_stopped") for r in list(self.rooms.values())),
                             return_exceptions=True)
        if self._api is not None:
            await self._api.aclose()
            self._api = None
        log.info("bridge_stopped")

    async def run_until(self, stop: asyncio.Event, rooms: list[str] | None = None) -> None:
        await self.start()
        try:
            for r in rooms or []:
                await self.dispatch(r)
            await stop.wait()
        finally:
            await self.close()

    def livekit_api(self) -> api.LiveKitAPI:
        if self._api is None:
            self._api = api.LiveKitAPI(self.s.api_url, self.s.api_key, self.s.api_secret)
        return self._api

    # ---- rooms --------------------------------------------------------------------------------

    async def route(self, room: str, explicit: str = "",
                    agent: str = "") -> tuple[Route, AgentChoice]:
        """The region of ``room``'s sessions (``routing``: what the dispatch asks for, the
        room's metadata (else that of LiveKit's agent dispatch for it), the region map on the
        callers already in it, or the default) and the
        agent they talk to (``agents``: the dispatch's, the room's metadata, LiveKit's agent
        dispatch, or the default). Raises ``RegionRefused`` (after an error event) for a region
        this bridge does not serve, ``AgentRefused`` for an agent not published there (after
        an error event when the room named it)."""
        metadata, callers, dispatched = "", [], []
        lk = self.livekit_api()
        rooms = await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))
        if rooms.rooms:  # the room's own word (none if it does not exist yet)
            metadata = rooms.rooms[0].metadata
            if self.router.rules and not explicit:
                resp = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
                callers = [Caller(dict(p.attributes), p.region) for p in resp.participants
                           if p.identity != self.s.identity]
            if not agent.strip() and not metadata_agent(metadata):
                found = await self._livekit_dispatches(room)
                dispatched = [d.agent_name for d in found]
                # a dispatch's metadata speaks for a room that has none (a SIP dispatch rule's
                # room is made by livekit-sip, with the rule's agent dispatch: ``ops.sip``)
                metadata = metadata or next((d.metadata for d in found if d.metadata), "")
        try:
            route = self.router.choose(explicit=explicit, metadata=metadata, callers=callers)
        except RegionRefused as e:
            await self._refused(room, str(e))
            raise
        choice = choose_agent(requested=agent, metadata=metadata, livekit=dispatched)
        if choice.name:
            try:
                await check_published(self.buses[route.region].js, route.region, choice.name)
            except AgentRefused as e:
                if choice.from_room:  # nobody asked: the bus is the only one to hear of it
                    await self._refused(room, str(e), code="unknown_agent", region=route.region)
                else:  # the requester hears why; there is no session yet
                    log.error("dispatch_refused", reason=str(e), agent=choice.name,
                              pii={"room": room})
                raise
        return route, choice

    async def _livekit_dispatches(self, room: str) -> list[api.AgentDispatch]:
        """LiveKit's explicit agent dispatches for ``room``."""
        try:
            return list(await self.livekit_api().agent_dispatch.list_dispatch(room))
        except Exception as e:  # noqa: BLE001 - a server without agent dispatch: none
            log.warning("list_dispatch_failed", error=repr(e), pii={"room": room})
            return []

    async def _refused(self, room: str, why: str, *, code: str = "region_not_served",
                       region: str = "") -> None:
        """One error event for the refused room, in ``region`` (default: the bridge's; the
        only content: an opaque id of the room and why), and a log line."""
        region = region or self.s.region
        sid = caller_session_id(self.s, room, "")
        log.error("room_refused", session=sid, code=code, reason=why, pii={"room": room})
        await self.buses[region].publish_error(region, sid, turn=0, code=code,
                                               message=why, stage="bridge")

    @staticmethod
    def _same(agent: RoomAgent, region: str, name: str) -> RoomAgent:
        """The agent already in the room, if it is what the dispatch asks for."""
        if region and region != agent.region:
            raise RegionRefused(f"the agent is in room {agent.name!r} for region "
                                f"{agent.region!r}, not {region!r}")
        if name.strip() and name.strip() != agent.agent:
            now = repr(agent.agent) if agent.agent else "the default agent"
            raise AgentRefused(f"the agent in room {agent.name!r} is {now}, "
                               f"not {name.strip()!r}")
        return agent

    async def dispatch(self, room: str, region: str = "", agent: str = "") -> RoomAgent:
        """Join ``room`` (once: a second call returns the same agent), its sessions in
        ``region`` talking to ``agent`` (empty: the bridge chooses; see ``route``)."""
        if not room or len(room) > 256:
            raise BridgeError(f"invalid room name {room!r}")
        if (joined := self.rooms.get(room)) is not None and not joined.closed.is_set():
            return self._same(joined, region, agent)
        if (pending := self._joining.get(room)) is not None:
            return self._same(await asyncio.shield(pending), region, agent)
        fut: asyncio.Future[RoomAgent] = asyncio.get_running_loop().create_future()
        self._joining[room] = fut
        t0 = time.perf_counter()
        try:
            route, choice = await self.route(room, region, agent)
        except BaseException as e:
            self._joining.pop(room, None)
            fut.set_exception(e)
            fut.exception()
            raise
        joined = RoomAgent(self.buses[route.region], self.s, room, on_gone=self._gone,
                           region=route.region, agent=choice.name,
                           livekit=self.livekit_api, region_callers=self.callers_in)
        try:
            await joined.join()
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody else waits
            await joined.close("join_failed")
            log.error("dispatch_failed", pii={"room": room}, error=repr(e))
            raise
        finally:
            self._joining.pop(room, None)
        self.rooms[room] = joined
        fut.set_result(joined)
        log.info("dispatched", pii={"room": room}, region=route.region, source=route.source,
                 agent=choice.name, agent_source=choice.source,
                 ms=round((time.perf_counter() - t0) * 1000, 1))
        return joined

    async def leave(self, room: str, reason: str = "agent_left") -> None:
        agent = self.rooms.get(room)
        if agent is not None:
            await agent.close(reason)

    def callers_in(self, region: str) -> int:
        """Callers this bridge holds in ``region``, every room together."""
        return sum(len(r.sessions) for r in self.rooms.values() if r.region == region)

    def _gone(self, agent: RoomAgent) -> None:
        if self.rooms.get(agent.name) is agent:
            del self.rooms[agent.name]

    async def _on_dispatch(self, msg: Msg) -> None:
        try:
            req = decode_dispatch_request(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            await msg.respond(encode_json(DispatchReply(ok=False, error=f"bad request: {e}")))
            return
        t0 = time.perf_counter()
        try:
            agent = await self.dispatch(req.room, req.region, req.agent)
        except (RegionRefused, AgentRefused) as e:
            await msg.respond(encode_json(DispatchReply(ok=False, room=req.room, error=str(e),
                                                        agent=req.agent)))
            return
        except Exception as e:  # noqa: BLE001 - the requester hears why
            await msg.respond(encode_json(DispatchReply(ok=False, room=req.room,
                                                        error=repr(e))))
            return
        await msg.respond(encode_json(DispatchReply(
            ok=True, room=req.room, region=agent.region, agent=agent.agent,
            sessions=[s.id for s in agent.sessions.values()],
            ms=round((time.perf_counter() - t0) * 1000, 1),
        )))

    async def _on_call(self, msg: Msg) -> None:
        """``voxbus call``: place a phone call from a new room (``dial``), answered when it is
        answered or failed; the work is a task of the bridge (a call may ring for a while)."""
        try:
            req = decode_call_request(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            await msg.respond(encode_json(CallReply(ok=False, error=f"bad request: {e}")))
            return

        async def call() -> None:
            try:
                reply = await place_call(self, req)
            except (RegionRefused, AgentRefused) as e:
                reply = CallReply(ok=False, error=str(e))
            except Exception as e:  # noqa: BLE001 - the requester hears why
                log.exception("call_error")
                reply = CallReply(ok=False, error=repr(e))
            await msg.respond(encode_json(reply))

        self._tasks.spawn(call(), name="place-call")

    async def _has_caller(self, room: str) -> bool:
        """The room's participant count in ``list_rooms`` lags by seconds: ask for the list."""
        resp = await self.livekit_api().room.list_participants(
            api.ListParticipantsRequest(room=room)
        )
        return any(
            p.identity != self.s.identity and p.kind != api.ParticipantInfo.Kind.AGENT
            for p in resp.participants
        )

    async def _auto_join(self) -> None:
        """Poll the RoomService; join every room with a caller that we are not in."""
        failures: dict[str, float] = {}
        while True:
            try:
                resp = await self.livekit_api().room.list_rooms(api.ListRoomsRequest())
                now = time.monotonic()
                for r in resp.rooms:
                    if r.name in self.rooms or r.name in self._joining:
                        continue
                    if now - failures.get(r.name, -1e9) < 10 * self.s.poll_s:
                        continue
                    if r.num_participants <= 0 and not await self._has_caller(r.name):
                        continue
                    try:
                        await self.dispatch(r.name)
                    except Exception:  # noqa: BLE001 - logged by dispatch; try later
                        failures[r.name] = now
            except Exception as e:  # noqa: BLE001 - the server may be restarting
                log.warning("list_rooms_failed", error=repr(e))
            await asyncio.sleep(self.s.poll_s)
