"""The bridge's caption writer, against a fake local participant (no LiveKit server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import structlog

from voxbus.contracts.messages import Transcript
from voxbus.runtime.tasks import TaskSet
from voxbus.services.bridge import captions as captions_module
from voxbus.services.bridge.captions import Captions, TextWriter


@dataclass
class FakeWriter:
    topic: str
    attributes: dict[str, str]
    sender_identity: str | None
    writes: list[str] = field(default_factory=list)
    closed_with: dict[str, str] | None = None
    closes: int = 0

    async def write(self, text: str) -> None:
        assert not self.closes, "written after its close"
        self.writes.append(text)

    async def aclose(self, *, attributes: dict[str, str] | None = None) -> None:
        self.closes += 1
        self.closed_with = attributes or {}


@dataclass
class FakeParticipant:
    streams: list[FakeWriter] = field(default_factory=list)
    fail: int = 0  # the next ``fail`` streams fail to open
    hang: bool = False

    async def stream_text(
        self, *, topic: str, attributes: dict[str, str] | None = None,
        sender_identity: str | None = None,
    ) -> TextWriter:
        if self.hang:
            await asyncio.sleep(3600)
        if self.fail:
            self.fail -= 1
            raise ConnectionError("room gone")
        w = FakeWriter(topic, dict(attributes or {}), sender_identity)
        self.streams.append(w)
        return w


@asynccontextmanager
async def writer(
    lp: FakeParticipant, *, start: bool = True, enabled: bool = True, max_queued: int = 256
) -> AsyncIterator[Captions]:
    tasks = TaskSet("test")
    c = Captions(lp, session="s1", caller_identity="alice", agent_track_sid=lambda: "TR_agent",
                 log=structlog.get_logger("test").bind(session="s1"), enabled=enabled,
                 max_queued=max_queued)
    if start:
        c.start(tasks)
    try:
        yield c
    finally:
        await tasks.close()


def transcript(turn: int, text: str, seq: int = 0) -> Transcript:
    return Transcript(session="s1", turn=turn, seq=seq, text=text, is_final=True,
                      speech_start_ns=0)


@pytest.mark.fast
async def test_a_user_caption_is_one_finished_stream_in_the_callers_name() -> None:
    lp = FakeParticipant()
    async with writer(lp) as c:
        c.user(transcript(2, "Hello there", seq=5), track_sid="TR_mic")
        await asyncio.wait_for(c.flush(), 1)
    [w] = lp.streams
    assert w.topic == "lk.transcription" and w.sender_identity == "alice"
    assert w.attributes == {
        "lk.transcription_final": "true", "lk.segment_id": "s1-user-2-5",
        "lk.transcribed_track_id": "TR_mic", "voxbus.turn": "2",
    }
    assert w.writes == ["Hello there"] and w.closes == 1 and w.closed_with == {}


@pytest.mark.fast
async def test_an_agent_caption_streams_and_ends() -> None:
    lp = FakeParticipant()
    async with writer(lp) as c:
        c.agent(1, "Hel")
        c.agent(1, "lo.")
        c.agent_end(1, interrupted=False)
        c.agent_end(1, interrupted=True, char_end=2)  # only the first end counts
        await asyncio.wait_for(c.flush(), 1)
    [w] = lp.streams
    assert w.sender_identity is None
    assert w.attributes == {
        "lk.transcription_final": "false", "lk.segment_id": "s1-agent-1",
        "lk.transcribed_track_id": "TR_agent", "voxbus.turn": "1",
    }
    assert w.writes == ["Hel", "lo."]
    assert w.closes == 1 and w.closed_with == {"lk.transcription_final": "true"}


@pytest.mark.fast
async def test_an_interrupted_agent_caption_says_what_was_heard() -> None:
    lp = FakeParticipant()
    async with writer(lp) as c:
        c.agent(3, "One, two, three.")
        c.agent_end(3, interrupted=True, char_end=5)
        c.agent(3, " Four.")  # late text of the reply: a stream of its own, never ended again
        c.agent_end(3, interrupted=False)
        c.agent_end(4, interrupted=False)  # a reply with no text: no stream
        await asyncio.wait_for(c.flush(), 1)
    first, late = lp.streams
    assert first.writes == ["One, two, three."]
    assert first.closed_with == {"lk.transcription_final": "true", "voxbus.interrupted": "true",
                                 "voxbus.char_end": "5"}
    assert late.writes == [" Four."] and late.closes == 0


@pytest.mark.fast
async def test_replies_to_two_turns_are_two_streams() -> None:
    lp = FakeParticipant()
    async with writer(lp) as c:
        c.agent(1, "First.")
        c.agent(2, "Second.")
        c.agent_end(2, interrupted=False)
        c.agent_end(1, interrupted=True, char_end=0)
        await asyncio.wait_for(c.flush(), 1)
    one, two = lp.streams
    assert (one.attributes["voxbus.turn"], one.writes) == ("1", ["First."])
    assert (two.attributes["voxbus.turn"], two.writes) == ("2", ["Second."])
    assert one.closed_with is not None and one.closed_with["voxbus.char_end"] == "0"
    assert two.closed_with == {"lk.transcription_final": "true"}


@pytest.mark.fast
async def test_the_queue_is_bounded() -> None:
    lp = FakeParticipant()
    with structlog.testing.capture_logs() as logs:
        async with writer(lp, start=False, max_queued=2) as c:
            for turn in (1, 2, 3):
                c.user(transcript(turn, "hi"), track_sid="")
            tasks = TaskSet("late")
            c.start(tasks)
            await asyncio.wait_for(c.flush(), 1)
            await tasks.close()
    assert [w.attributes["voxbus.turn"] for w in lp.streams] == ["1", "2"]
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["caption_dropped"]


@pytest.mark.fast
async def test_failures_and_hangs_never_stop_the_captions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(captions_module, "CAPTION_TIMEOUT_S", 0.05)
    lp = FakeParticipant(fail=1)
    with structlog.testing.capture_logs() as logs:
        async with writer(lp) as c:
            c.user(transcript(1, "lost"), track_sid="")
            c.user(transcript(2, "kept"), track_sid="")
            await asyncio.wait_for(c.flush(), 1)
            lp.hang = True
            c.user(transcript(3, "hangs"), track_sid="")
            await asyncio.wait_for(c.flush(), 1)
            lp.hang = False
            c.user(transcript(4, "kept too"), track_sid="")
            await asyncio.wait_for(c.flush(), 1)
    assert [w.writes for w in lp.streams] == [["kept"], ["kept too"]]
    failed = [e for e in logs if e["event"] == "caption_failed"]
    assert len(failed) == 2 and "room gone" in failed[0]["error"]
    assert "TimeoutError" in failed[1]["error"]


@pytest.mark.fast
async def test_disabled_captions_write_nothing_and_text_is_logged_only_under_pii() -> None:
    lp = FakeParticipant()
    with structlog.testing.capture_logs() as logs:
        async with writer(lp, enabled=False) as c:
            c.user(transcript(1, "Secret plans"), track_sid="")
            c.agent(1, "Secret reply")
            c.agent_end(1, interrupted=False)
            await asyncio.wait_for(c.flush(), 1)
    assert not lp.streams
    assert [e["event"] for e in logs] == ["user_caption"]
    for entry in logs:
        assert "Secret" not in repr({k: v for k, v in entry.items() if k != "pii"})
