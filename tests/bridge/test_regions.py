"""One bridge serving the rooms of two regions on a real supercluster (``eu`` and ``us``, a
server each, joined by a gateway), each region's echo agent on its own servers: a room's region
is chosen when the agent is dispatched (the dispatch's word, else the room's metadata, else the
region map on the callers in it, else the default), its caller's audio is stored in that region
only and answered there, and a room of a region the bridge does not serve is refused with an
error event."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import pytest_asyncio
from livekit import api

from tests.bridge.caller import Caller, Tap, load_wav, session_of
from voxbus.contracts import streams
from voxbus.contracts.messages import AudioIn, ErrorEvent
from voxbus.dev.livekit_server import LiveKitServer
from voxbus.ops.supercluster import Supercluster
from voxbus.runtime.bus import Bus
from voxbus.runtime.echo import EchoStage
from voxbus.runtime.worker import Worker
from voxbus.services.bridge.bridge import Bridge
from voxbus.services.bridge.dispatch import request_dispatch
from voxbus.services.bridge.routing import RegionRefused
from voxbus.services.bridge.settings import BridgeSettings

pytestmark = pytest.mark.livekit

REGIONS = ("eu", "us")


@dataclass
class Rig:
    cluster: Supercluster
    buses: dict[str, Bus]
    taps: dict[str, Tap]
    bridge: Bridge
    livekit: LiveKitServer


@pytest_asyncio.fixture
async def rig(livekit: LiveKitServer, bridge_settings: BridgeSettings,
              tmp_path: Path) -> AsyncIterator[Rig]:
    cluster = await asyncio.to_thread(Supercluster(REGIONS, 1, tmp_path / "nats").start)
    buses: dict[str, Bus] = {}
    workers: list[Worker] = []
    taps: dict[str, Tap] = {}
    bridge: Bridge | None = None
    try:
        for r in REGIONS:
            buses[r] = await Bus.connect(cluster.url(r), regions=[r], partitions=4,
                                         name=f"test-{r}")
            await buses[r].provision()
            taps[r] = await Tap.on_bus(buses[r], r)
            workers.append(Worker(buses[r], EchoStage()))
            await workers[-1].start()
        settings = replace(bridge_settings, region="eu", region_map={"country:US": "us"})
        bridge = Bridge(buses, settings)
        await bridge.start()
        yield Rig(cluster, buses, taps, bridge, livekit)
    finally:
        if bridge is not None:
            await bridge.close()
        for w in workers:
            await w.stop()
        for t in taps.values():
            await t.close()
        for b in buses.values():
            await b.close()
        await asyncio.to_thread(cluster.stop)


def _caller(rig: Rig, room: str, **attributes: str) -> Caller:
    lk = rig.livekit
    return Caller(lk.url, lk.config.api_key, lk.config.api_secret, room,
                  attributes=dict(attributes))


async def _stored_in(bus: Bus, region: str, session: str) -> int:
    """Caller audio of ``session`` stored in ``region``'s audio stream."""
    info = await bus.js.stream_info(streams.audio_stream(region),
                                    subjects_filter=f"voxbus.{region}.*.{session}.audio.in")
    return sum((info.state.subjects or {}).values())


async def _talk(rig: Rig, caller: Caller, region: str) -> str:
    """The caller speaks; its session lives in ``region`` only and the agent answers it."""
    await caller.join()
    sess = session_of(caller)
    await rig.taps[region].wait_for(AudioIn, session=sess, within_s=10)
    await asyncio.wait_for(caller.agent_track.wait(), 10)
    pcm, rate = load_wav("traffic.wav")
    await caller.play(pcm[: rate * 2])
    await asyncio.sleep(1.0)
    assert caller.first_voice_heard() is not None, "the agent never answered"
    other = next(r for r in REGIONS if r != region)
    assert await _stored_in(rig.buses[region], region, sess) > 50
    assert await _stored_in(rig.buses[other], other, sess) == 0
    assert not rig.taps[other].of(AudioIn, sess)
    return sess


async def test_a_room_s_region_comes_from_the_dispatch_its_metadata_the_map_or_the_default(
    rig: Rig,
) -> None:
    lk = api.LiveKitAPI(rig.livekit.url.replace("ws://", "http://"),
                        rig.livekit.config.api_key, rig.livekit.config.api_secret)
    try:
        # asked for explicitly
        agent = await rig.bridge.dispatch("explicit-room", "us")
        assert agent.region == "us"
        c1 = _caller(rig, "explicit-room")
        await _talk(rig, c1, "us")
        # the room says so
        await lk.room.create_room(api.CreateRoomRequest(
            name="metadata-room", metadata=json.dumps({"voxbus_region": "us"})))
        assert (await rig.bridge.dispatch("metadata-room")).region == "us"
        # the region map, on the caller already in the room
        c3 = _caller(rig, "map-room", country="US")
        await c3.join()
        assert (await rig.bridge.dispatch("map-room")).region == "us"
        # nothing said: the default
        assert (await rig.bridge.dispatch("default-room")).region == "eu"
        c4 = _caller(rig, "default-room")
        await _talk(rig, c4, "eu")
        for c in (c1, c3, c4):
            await c.leave()
    finally:
        await lk.aclose()


async def test_a_room_of_an_unserved_region_is_refused_with_an_error_event(rig: Rig) -> None:
    lk = api.LiveKitAPI(rig.livekit.url.replace("ws://", "http://"),
                        rig.livekit.config.api_key, rig.livekit.config.api_secret)
    try:
        await lk.room.create_room(api.CreateRoomRequest(
            name="ap-room", metadata=json.dumps({"voxbus_region": "ap"})))
        with pytest.raises(RegionRefused, match="'ap' .* not served by this bridge"):
            await rig.bridge.dispatch("ap-room")
        event = await rig.taps["eu"].wait_for(ErrorEvent, within_s=5,
                                              where=lambda e: e.code == "region_not_served")
        assert "ap" in event.message and "ap-room" not in event.message  # no room name
        assert "ap-room" not in rig.bridge.rooms
        # over NATS, as `voxbus dispatch` asks: the answer says why, in one line
        reply = await request_dispatch("ap-room", nats_url=rig.cluster.url("eu"), region="eu",
                                       explicit=False)
        assert not reply.ok and "not served" in reply.error and "\n" not in reply.error
        # the dispatch and the room disagree: refused, not quietly moved
        reply = await request_dispatch("ap-room", nats_url=rig.cluster.url("eu"), region="eu")
        assert not reply.ok and "metadata says 'ap'" in reply.error
    finally:
        await lk.aclose()
