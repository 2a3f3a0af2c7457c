"""Dispatch chooses the agent, on a real nats-server and a real livekit-server: the dispatch's
``agent``, else the room's metadata ``{"agent": ...}``, else LiveKit's explicit agent dispatch
for the room, else the default; a named agent must be published in the region (with its
handoffs) or the room is refused in one line, and every session in the room says its agent in
``SessionStarted``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from livekit import api
from nats.js.errors import KeyNotFoundError

from tests.bridge.caller import Caller, Tap, session_of
from tests.conftest import REGION
from tests.secure import connect_as, secure_nats
from voxbus.agents import Agent
from voxbus.agents.registry import AgentRegistry
from voxbus.contracts.control import CALLER_STATE, state_key
from voxbus.contracts.messages import ErrorEvent, SessionStarted
from voxbus.contracts.streams import agents_bucket
from voxbus.dev.livekit_server import LiveKitServer
from voxbus.ops.auth import Identities
from voxbus.runtime.bus import Bus
from voxbus.services.bridge.agents import (
    AgentRefused,
    check_published,
    choose_agent,
    metadata_agent,
    published_agents,
)
from voxbus.services.bridge.bridge import Bridge
from voxbus.services.bridge.dispatch import request_dispatch

REPO = Path(__file__).resolve().parents[2]

FRONTDESK = Agent(name="frontdesk", instructions="You take table bookings.",
                  handoffs=["events"])
EVENTS = Agent(name="events", instructions="You plan private events.")
LONER = Agent(name="loner", instructions="You hand off to nobody published.",
              handoffs=["ghost"])


async def _publish(bus: Bus, *agents: Agent) -> None:
    registry = AgentRegistry(await bus.kv(agents_bucket(REGION)))
    await registry.publish([a.definition("tests") for a in agents])


async def _caller_state(bus: Bus, session: str) -> bytes:
    """``<session>.caller``, written by the bridge as the session starts."""
    kv = await bus.state(REGION)
    for _ in range(100):
        with contextlib.suppress(KeyNotFoundError):
            value = (await kv.get(state_key(session, CALLER_STATE))).value
            return value or b""
        await asyncio.sleep(0.05)
    raise AssertionError("no caller state")


def _dispatch_cli(nats_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``voxbus dispatch`` as a process, as an operator runs it."""
    env = {**os.environ, "NATS_URL": nats_url, "VOXBUS_REGIONS": REGION,
           "BRIDGE_REGION": REGION}
    return subprocess.run([sys.executable, "-m", "voxbus.cli", "dispatch", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.fast
def test_the_agent_comes_from_the_dispatch_the_metadata_livekit_or_the_default() -> None:
    assert metadata_agent('{"agent": " frontdesk ", "voxbus_region": "eu"}') == "frontdesk"
    assert metadata_agent("not json") == metadata_agent('["agent"]') == ""
    assert metadata_agent('{"agent": 3}') == ""
    meta = '{"agent": "events"}'
    assert choose_agent(requested="frontdesk", metadata=meta, livekit=["x"]).source == "dispatch"
    assert choose_agent(metadata=meta, livekit=["x"]).name == "events"
    lk = choose_agent(livekit=["", "frontdesk"])  # "": LiveKit's own automatic dispatch
    assert (lk.name, lk.source, lk.from_room) == ("frontdesk", "livekit", True)
    assert choose_agent(livekit=[""]).name == ""


async def test_the_bridge_identity_may_check_and_list_the_region_s_agents(
    tmp_path: Path,
) -> None:
    """As ``bridge-<region>`` on a server that enforces the identities: a key watcher (a
    consumer on the bucket) is not allowed, reading the bucket stream's subjects is."""
    ids = Identities.load_or_create(tmp_path / "ids", [REGION])
    with secure_nats(ids, tmp_path / "auth.conf") as server:
        operator = await connect_as(server, ids, "operator", REGION)
        bridge = await connect_as(server, ids, "bridge", REGION)
        try:
            await operator.provision()
            assert await published_agents(bridge.js, REGION) == []
            await _publish(operator, FRONTDESK, EVENTS)
            assert await published_agents(bridge.js, REGION) == ["events", "frontdesk"]
            await check_published(bridge.js, REGION, "frontdesk")
            with pytest.raises(AgentRefused, match=r"published: events, frontdesk\)$"):
                await check_published(bridge.js, REGION, "Bad Name")
        finally:
            await bridge.close()
            await operator.close()


@pytest.mark.livekit
async def test_an_unknown_agent_is_refused_in_one_line_and_a_known_one_starts_the_session(
    livekit: LiveKitServer, bridge: Bridge, bus: Bus, nats_url: str, tap: Tap,
) -> None:
    await _publish(bus, FRONTDESK, EVENTS, LONER)
    assert await published_agents(bus.js, REGION) == ["events", "frontdesk", "loner"]

    # unknown: `voxbus dispatch` prints the refusal, one line, and exits 1; the bridge stays out
    proc = await asyncio.to_thread(_dispatch_cli, nats_url, "ask-room", "--agent", "nobody")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    answer = json.loads(lines[0])
    assert answer["ok"] is False
    assert answer["error"] == ("no agent 'nobody' in region 'test' "
                               "(published: events, frontdesk, loner)")
    assert "ask-room" not in bridge.rooms
    # an agent whose handoff is not published is refused too (the session could not start)
    reply = await request_dispatch("ask-room", nats_url=nats_url, region=REGION, agent="loner")
    assert not reply.ok and reply.error.startswith("no agent 'ghost' (a handoff of 'loner')")

    # known: the bridge joins; the caller's session says its agent
    proc = await asyncio.to_thread(_dispatch_cli, nats_url, "ask-room", "--agent", "frontdesk")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    answer = json.loads(proc.stdout)
    assert answer["ok"] and answer["agent"] == "frontdesk"
    caller = Caller(livekit.url, livekit.config.api_key, livekit.config.api_secret, "ask-room")
    await caller.join(publish=False)
    try:
        started = await tap.wait_for(SessionStarted, session=session_of(caller), within_s=10)
        assert started.agent == "frontdesk"
        assert json.loads(await _caller_state(bus, started.session))["agent"] == "frontdesk"
        # the room has its agent: asking for another is refused, asking for none is fine
        reply = await request_dispatch("ask-room", nats_url=nats_url, region=REGION,
                                       agent="events")
        assert not reply.ok and "is 'frontdesk', not 'events'" in reply.error
        again = await request_dispatch("ask-room", nats_url=nats_url, region=REGION)
        assert again.ok and again.agent == "frontdesk"
    finally:
        await caller.leave()
    assert not tap.of(ErrorEvent)  # a refused dispatch has no session: the requester heard


@pytest.mark.livekit
async def test_the_room_names_its_agent_in_its_metadata_or_a_livekit_agent_dispatch(
    livekit: LiveKitServer, bridge: Bridge, bus: Bus, tap: Tap,
) -> None:
    await _publish(bus, FRONTDESK, EVENTS)
    lk = api.LiveKitAPI(livekit.http_url, livekit.config.api_key, livekit.config.api_secret)
    try:
        await lk.room.create_room(api.CreateRoomRequest(
            name="meta-room", metadata=json.dumps({"agent": "frontdesk"})))
        assert (await bridge.dispatch("meta-room")).agent == "frontdesk"
        # LiveKit's explicit agent dispatch (the bridge reads the room's dispatches)
        await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
            agent_name="events", room="lk-room"))
        assert (await bridge.dispatch("lk-room")).agent == "events"
        # the dispatch's word comes first
        assert (await bridge.dispatch("plain-room", agent="events")).agent == "events"
        assert (await bridge.dispatch("default-room")).agent == ""
        # the room names an agent that is not published: refused, and an error event says so
        # (with auto-join nobody else would hear of it); the room is not joined
        await lk.room.create_room(api.CreateRoomRequest(
            name="ghost-room", metadata=json.dumps({"agent": "ghost"})))
        with pytest.raises(AgentRefused, match=r"^no agent 'ghost' in region 'test' "
                                               r"\(published: events, frontdesk\)$"):
            await bridge.dispatch("ghost-room")
        event = await tap.wait_for(ErrorEvent, within_s=5,
                                   where=lambda e: e.code == "unknown_agent")
        assert "ghost" in event.message and "ghost-room" not in event.message  # no room name
        assert "ghost-room" not in bridge.rooms
    finally:
        await lk.aclose()
