"""Purge erases every stored message and KV entry of one session, and nothing of another."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import REGION
from voxbus.contracts import streams
from voxbus.contracts.messages import AudioIn, EndOfTurn, ReplyText, Transcript
from voxbus.ops.purge import PurgeService, request_purge
from voxbus.runtime.bus import Bus
from voxbus.runtime.tasks import TaskSet


async def _store(bus: Bus, session: str) -> None:
    for seq in range(3):
        await bus.publish(REGION, AudioIn(session=session, seq=seq, sample_rate_hz=16000,
                                          capture_ns=time.time_ns(), pcm=b"\1\0" * 160))
    await bus.publish(REGION, Transcript(session=session, turn=1, seq=0,
                                         text=f"secret words of {session}", is_final=True,
                                         speech_start_ns=1))
    await bus.publish(REGION, ReplyText(session=session, turn=1, seq=0, text="reply",
                                        char_start=0, char_end=5))
    await bus.publish(REGION, EndOfTurn(session=session, turn=1, transcript="secret",
                                        speech_start_ns=1, speech_end_ns=2))
    kv = await bus.kv(streams.state_bucket(REGION))
    await kv.put(f"{session}.history", f"history of {session}".encode())
    await kv.put(f"{session}.info", b"{}")


async def _scan(bus: Bus) -> dict[str, list[bytes]]:
    """Every stored message of every stream, subject and payload together."""
    found: dict[str, list[bytes]] = {}
    for info in await bus.js.streams_info():
        name, state = info.config.name, info.state
        assert name is not None
        found[name] = []
        for seq in range(state.first_seq, state.last_seq + 1):
            try:
                raw = await bus.js.get_msg(name, seq)
            except Exception:  # deleted or purged sequence
                continue
            found[name].append((raw.subject or "").encode() + b" " + (raw.data or b""))
    return found


@pytest.mark.parametrize("via", ["service", "direct"])
async def test_purge_erases_one_session_only(bus: Bus, via: str) -> None:
    await _store(bus, "victim")
    await _store(bus, "bystander")
    before = await _scan(bus)
    assert any(b"victim" in m for msgs in before.values() for m in msgs)
    tasks = TaskSet("test")
    if via == "service":
        tasks.spawn(PurgeService(bus).run())
        await asyncio.sleep(0.2)
        done = await request_purge(bus, REGION, "victim")
        removed = done.removed
    else:
        from voxbus.ops.purge import purge_session

        removed = await purge_session(bus, REGION, "victim")
    await tasks.close()
    assert removed[streams.audio_stream(REGION)] == 3
    assert removed[streams.text_stream(REGION)] == 2
    assert removed[streams.control_stream(REGION)] == 1
    assert removed[f"KV_{streams.state_bucket(REGION)}"] == 2
    after = await _scan(bus)
    for name, msgs in after.items():
        leftovers = [m for m in msgs if b"victim" in m and name != streams.ops_stream()]
        assert not leftovers, (name, leftovers)
        by_stander_before = [m for m in before.get(name, []) if b"bystander" in m]
        assert [m for m in msgs if b"bystander" in m] == by_stander_before, name
    kv = await bus.kv(streams.state_bucket(REGION))
    assert (await kv.get("bystander.history")).value == b"history of bystander"
