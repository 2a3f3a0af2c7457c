"""Purge erases every stored message and KV entry of one session, and nothing of another."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from nats.js.errors import KeyNotFoundError

from tests.conftest import REGION
from voxbus.contracts import streams
from voxbus.contracts.agents import ToolOutcome
from voxbus.contracts.messages import AudioIn, EndOfTurn, ReplyText, Transcript
from voxbus.ops.nats import EmbeddedNats
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
        # what stays: the purge records, and the tombstone (its key holds only the session id)
        leftovers = [m for m in msgs if b"victim" in m and name != streams.ops_stream(REGION)
                     and b".purged/victim " not in m]
        assert not leftovers, (name, leftovers)
        by_stander_before = [m for m in before.get(name, []) if b"bystander" in m]
        assert [m for m in msgs if b"bystander" in m] == by_stander_before, name
    kv = await bus.kv(streams.state_bucket(REGION))
    assert (await kv.get("bystander.history")).value == b"history of bystander"


async def test_a_purge_during_a_reply_leaves_nothing_written_after_it(bus: Bus) -> None:
    """A stage is speaking a reply (100 frames a chunk, 10 ms apart) when the purge comes: the
    tombstone stops it at once, and after the completion nothing of the session is written or
    published; a message of the session sent afterwards is dropped, not handled."""
    from tests.runtime.stages import TickerStage
    from voxbus.contracts.messages import AudioOut
    from voxbus.ops.purge import purge_session
    from voxbus.runtime.worker import Worker

    heard: list[tuple[float, int]] = []

    async def on(m) -> None:  # type: ignore[no-untyped-def]
        msg = await bus.read(m.subject, m.data)
        if isinstance(msg, AudioOut):
            heard.append((time.monotonic(), msg.turn))

    await bus.nc.subscribe(f"voxbus.{REGION}.live.audio.out", cb=on)
    worker = Worker(bus, TickerStage())
    await worker.start()
    try:
        for chunk in range(5):
            await bus.publish(REGION, ReplyText(session="live", turn=1, seq=chunk, text="hello",
                                                char_start=chunk * 5, char_end=chunk * 5 + 5))
        while len(heard) < 20:
            await asyncio.sleep(0.01)
        removed = await purge_session(bus, REGION, "live")
        done = time.monotonic()
        assert removed[streams.audio_stream(REGION)] >= 20
        await bus.publish(REGION, ReplyText(session="live", turn=2, seq=0, text="again",
                                            char_start=0, char_end=5))
        await asyncio.sleep(1.0)
        after = [t for t, _turn in heard if t > done]
        assert not after, f"{len(after)} frames published after the purge completed"
        assert len(heard) < 500, "the reply ran on to its end"
        for name, msgs in (await _scan(bus)).items():
            if name == streams.audio_stream(REGION) or name == streams.text_stream(REGION):
                kept = [m for m in msgs if b".live." in m]
                # the one message sent after the purge is stored (a publisher is not the stage)
                # but was never handled: no audio for it
                assert all(b"llm.reply" in m for m in kept), (name, kept[:3])
    finally:
        await worker.stop()


async def _store_tools(bus: Bus, session: str) -> dict[str, bytes]:
    """What the agents leave of a session: a tool call (control stream), its outcome and the
    session's copy of its agent (state bucket). Returns bytes each of them alone holds."""
    from voxbus.agents.outcomes import ToolOutcomes
    from voxbus.contracts.agents import AgentDefinition, SessionAgent, agent_key
    from voxbus.contracts.agents import encode as encode_json
    from voxbus.contracts.messages import ToolCall

    secrets = {"arguments": f"card-of-{session}".encode(),
               "result": f"refund-for-{session}".encode(),
               "agent": f"instructions-for-{session}".encode()}
    await bus.publish(REGION, ToolCall(
        session=session, call_id="r1-0", agent="support", tool="refund",
        arguments=json.dumps({"card": secrets["arguments"].decode()})))
    kv = await bus.kv(streams.state_bucket(REGION))
    await ToolOutcomes(kv).put(session, ToolOutcome(
        call_id="r1-0", tool="refund", ok=True, result=json.dumps(secrets["result"].decode())))
    await kv.put(agent_key(session), encode_json(SessionAgent(current="support", agents={
        "support": AgentDefinition(name="support", instructions=secrets["agent"].decode())})))
    return secrets


def _files_holding(directory: Path, needles: dict[str, bytes]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {k: [] for k in needles}
    for path in directory.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found.update({k: [*found[k], path.name] for k, n in needles.items() if n in data})
    return found


async def test_purge_erases_tool_calls_outcomes_and_the_session_s_agent(
    bus: Bus, nats_server: EmbeddedNats
) -> None:
    """A session's tool call, its kept outcome and ``<session>.agent`` are erased: not readable
    (every stream and bucket read back), and not on disk either (overwritten, not marked
    deleted: each was written once, so no superseded revision keeps it). Another session's
    stay, byte for byte."""
    from voxbus.ops.purge import purge_session

    # the erase itself, on payloads as an unsealed producer writes them (sealing, which makes a
    # purge final whatever copy is left, has its own tests: tests/test_shredding.py)
    bus.seal = False
    secrets = await _store_tools(bus, "victim")
    await _store_tools(bus, "bystander")
    before = await _scan(bus)
    stores = nats_server.store_dir
    assert stores is not None
    names = [streams.control_stream(REGION), f"KV_{streams.state_bucket(REGION)}"]
    dirs = [stores / "jetstream" / "$G" / "streams" / n for n in names]
    assert all(any(_files_holding(d, secrets).values()) for d in dirs), "the search finds it"

    removed = await purge_session(bus, REGION, "victim", grace_s=0)
    assert removed[streams.control_stream(REGION)] == 1  # the tool call
    assert removed[f"KV_{streams.state_bucket(REGION)}"] == 2  # its outcome, the agent's copy
    after = await _scan(bus)
    for name, msgs in after.items():
        leftovers = [m for m in msgs if b"victim" in m and name != streams.ops_stream(REGION)
                     and b".purged/victim " not in m]
        assert not leftovers, (name, leftovers)
        assert [m for m in msgs if b"bystander" in m] == [
            m for m in before.get(name, []) if b"bystander" in m], name
    kv = await bus.kv(streams.state_bucket(REGION))
    for key in ("victim.agent", "victim.tool.r1-0"):
        with pytest.raises(KeyNotFoundError):
            await kv.get(key)
    assert b"refund-for-bystander" in ((await kv.get("bystander.tool.r1-0")).value or b"")
    for d in dirs:
        on_disk = _files_holding(d, secrets)
        assert not any(on_disk.values()), (d.name, on_disk)
