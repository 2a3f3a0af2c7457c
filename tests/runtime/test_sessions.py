"""The runtime's sessions, on the in-memory runner (the same machinery a worker runs): handlers
opened and closed by the runtime, late outputs through the one publish path, owned tasks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from voxbus.contracts.messages import AnyMessage, AudioIn, Interrupt, Message, ReplyText
from voxbus.contracts.subjects import Kind
from voxbus.runtime.closing import CloseReason
from voxbus.runtime.scope import SessionScope
from voxbus.runtime.stage import Context, Retryable, SessionPolicy
from voxbus.runtime.testing import StageRunner

pytestmark = pytest.mark.fast

REGION = "test"


def frame(session: str, seq: int, turn: int = 0) -> AudioIn:
    return AudioIn(session=session, turn=turn, seq=seq, sample_rate_hz=16000, capture_ns=seq,
                   pcm=b"\0\0" * 160)


class Handler:
    def __init__(self, stage: LaterStage, scope: SessionScope) -> None:
        self.stage = stage
        self.scope = scope
        self.seen: list[int] = []

    async def handle(self, msg: AnyMessage, ctx: Context) -> AsyncIterator[Message]:
        if isinstance(msg, Interrupt):
            return
        assert isinstance(msg, AudioIn)
        self.seen.append(msg.seq)
        if msg.seq == 99:
            self.scope.release()
        # the answer comes later, from a background task (like the STT's final)
        self.scope.spawn(self.later(msg), name="later")
        return
        yield

    async def later(self, msg: AudioIn) -> None:
        try:
            await asyncio.sleep(self.stage.delay_s)
        except asyncio.CancelledError:
            self.stage.cancelled += 1
            raise
        await self.scope.publish(ReplyText(session=msg.session, turn=msg.turn, seq=msg.seq,
                                           text="x", char_start=0, char_end=1))

    async def close(self, reason: CloseReason) -> None:
        self.stage.closed.append((self.scope.session, reason.value, list(self.seen)))


class LaterStage:
    name = "later"
    inputs: tuple[Kind, ...] = (Kind.AUDIO_IN,)
    urgent: tuple[Kind, ...] = (Kind.INTERRUPT,)

    def __init__(self, delay_s: float = 0.05, idle_s: float = 30.0, flaky_opens: int = 0) -> None:
        self.policy = SessionPolicy(idle_close_s=idle_s)
        self.delay_s = delay_s
        self.opened: list[str] = []
        self.closed: list[tuple[str, str, list[int]]] = []
        self.cancelled = 0
        self.flaky_opens = flaky_opens

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def open(self, scope: SessionScope) -> Handler:
        if self.flaky_opens:
            self.flaky_opens -= 1
            raise Retryable("state bucket unavailable")
        self.opened.append(scope.session)
        return Handler(self, scope)


async def test_late_outputs_of_an_interrupted_turn_are_dropped() -> None:
    stage = LaterStage(delay_s=0.1)
    async with StageRunner(stage, region=REGION) as runner:
        await runner.send(frame("s", 1, turn=1))
        await runner.send(frame("s", 2, turn=2))
        await runner.send(Interrupt(session="s", turn=1, at_ns=0))
        await runner.tap.until(lambda t: len(t.of(ReplyText)) == 1)
        await asyncio.sleep(0.2)
    assert [m.turn for m in runner.tap.of(ReplyText)] == [2]


async def test_a_session_opens_once_closes_when_idle_and_its_tasks_go_with_it() -> None:
    stage = LaterStage(delay_s=5.0, idle_s=0.2)
    async with StageRunner(stage, region=REGION) as runner:
        for seq in range(3):
            await runner.send(frame("s", seq))
        await runner.idle()
        assert stage.opened == ["s"]
        for _ in range(100):
            if stage.closed:
                break
            await asyncio.sleep(0.02)
        assert stage.closed == [("s", "idle", [0, 1, 2])]
        assert stage.cancelled == 3, "the session's background tasks outlived it"
        await runner.send(frame("s", 3))  # a new message opens it anew
        await runner.idle()
    assert stage.opened == ["s", "s"]
    assert [c[1] for c in stage.closed] == ["idle", "drained"]


async def test_release_closes_the_handler_after_the_message() -> None:
    stage = LaterStage(delay_s=0.0)
    async with StageRunner(stage, region=REGION) as runner:
        await runner.send(frame("s", 99))
        for _ in range(100):
            if stage.closed:
                break
            await asyncio.sleep(0.01)
        assert stage.closed and stage.closed[0][1] == "released"
        await runner.send(frame("s", 5))
        await runner.idle()
    assert stage.opened == ["s", "s"]


async def test_a_failing_open_is_retried_in_the_lane() -> None:
    stage = LaterStage(delay_s=0.0, flaky_opens=2)
    async with StageRunner(stage, region=REGION) as runner:
        await runner.send(frame("s", 0))
        await runner.send(frame("s", 1))
        await runner.idle()
    assert stage.opened == ["s"]
    assert [outcome for outcome, _ in runner.outcomes()] == ["ack", "ack"]


async def test_a_quiet_session_makes_room_for_one_with_input() -> None:
    """Every place taken by sessions that sent one message: a session that keeps sending gets
    the place of the quietest, and keeps it; a session that is talking is never evicted."""
    stage = LaterStage(delay_s=0.0)
    stage.policy = SessionPolicy(max_sessions=2, evict_idle_s=0.3, admit_timeout_s=10)
    async with StageRunner(stage, region=REGION) as runner:
        await runner.send(frame("quiet", 0))
        for seq in range(3):
            await runner.send(frame("talker", seq))
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
        for seq in range(20):  # a third session arrives and keeps sending
            await runner.send(frame("late", seq))
            await runner.send(frame("talker", 3 + seq))
            await asyncio.sleep(0.05)
        await runner.idle()
    closed = {(s, reason) for s, reason, _ in stage.closed}
    assert ("quiet", "evicted") in closed, stage.closed
    assert ("talker", "evicted") not in closed and ("late", "evicted") not in closed
    late = [seqs for s, _r, seqs in stage.closed if s == "late"]
    assert sum(late, []) == list(range(20)), "the late session lost or reordered frames"
