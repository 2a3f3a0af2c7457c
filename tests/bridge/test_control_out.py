"""The bridge's control-message publisher: in order, through bus failures, bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import nats.errors
import pytest
import structlog

from tests.conftest import REGION
from voxbus.contracts.messages import (
    AgentSpoke,
    Interrupt,
    Message,
    SessionEnded,
    SessionStarted,
)
from voxbus.contracts.streams import control_stream
from voxbus.runtime.bus import Bus
from voxbus.runtime.tasks import TaskSet
from voxbus.runtime.testing import stored
from voxbus.services.bridge.control_out import ControlOut, Publisher


class FlakyBus:
    """A bus whose publish fails (``fail`` times, raising, or hanging when ``hang``) before
    each message gets through; records what got through, with its headers."""

    def __init__(self, fail: int = 0, *, hang: bool = False, forever: bool = False) -> None:
        self.fail = fail
        self.hang = hang
        self.forever = forever
        self.tries: list[tuple[str, str]] = []  # (message id, kind) of every try
        self.sent: list[tuple[Message, str]] = []
        self._failed = 0

    async def publish(
        self, region: str, msg: Message, *, headers: Mapping[str, str] | None = None
    ) -> None:
        assert region == REGION
        msg_id = dict(headers or {})["Nats-Msg-Id"]
        self.tries.append((msg_id, type(msg).__name__))
        if self.forever or self._failed < self.fail:
            self._failed += 1
            if self.hang:
                await asyncio.sleep(3600)
            raise nats.errors.NoServersError
        self._failed = 0
        self.sent.append((msg, msg_id))


def msgs(n: int) -> list[Message]:
    return [Interrupt(session="s1", turn=t, at_ns=t) for t in range(1, n + 1)]


@asynccontextmanager
async def control_out(
    bus: Publisher, *, start: bool = True, retry_s: float = 5.0, max_queued: int = 1024,
    attempt_timeout_s: float = 1.0, prefix: str = "s1-ctl-7",
) -> AsyncIterator[ControlOut]:
    tasks = TaskSet("test")
    ctl = ControlOut(bus, REGION, msg_id_prefix=prefix, attempt_timeout_s=attempt_timeout_s,
                     log=structlog.get_logger("test").bind(session="s1"), retry_s=retry_s,
                     max_queued=max_queued, retry_pause_s=0.01)
    if start:
        ctl.start(tasks)
    try:
        yield ctl
    finally:
        await tasks.close()


@pytest.mark.fast
async def test_messages_go_out_in_order_each_with_its_own_id() -> None:
    bus = FlakyBus()
    async with control_out(bus) as ctl:
        for m in msgs(5):
            ctl.publish(m)
        await ctl.close()
    assert [m.turn for m, _ in bus.sent] == [1, 2, 3, 4, 5]
    assert [i for _, i in bus.sent] == [f"s1-ctl-7-{n}" for n in range(5)]


@pytest.mark.fast
async def test_failures_are_retried_with_the_same_id_and_order_is_kept() -> None:
    bus = FlakyBus(fail=3)
    async with control_out(bus) as ctl:
        for m in msgs(3):
            ctl.publish(m)
        await ctl.close()
    assert [m.turn for m, _ in bus.sent] == [1, 2, 3]
    # each message: three failed tries, then the one that got through, all with one id
    assert [i for i, _ in bus.tries] == [f"s1-ctl-7-{n}" for n in range(3) for _ in range(4)]


@pytest.mark.fast
async def test_a_publish_that_hangs_is_timed_out_and_retried() -> None:
    bus = FlakyBus(fail=2, hang=True)
    async with control_out(bus, attempt_timeout_s=0.05) as ctl:
        ctl.publish(msgs(1)[0])
        await asyncio.wait_for(ctl.close(), 2)
    assert [m.turn for m, _ in bus.sent] == [1]
    assert len(bus.tries) == 3


@pytest.mark.fast
async def test_a_message_is_given_up_after_the_deadline_and_the_next_goes_on() -> None:
    bus = FlakyBus(forever=True)
    with structlog.testing.capture_logs() as logs:
        async with control_out(bus, retry_s=0.1) as ctl:
            ctl.publish(Interrupt(session="s1", turn=4, at_ns=1))
            await asyncio.sleep(0.3)
            bus.forever = False
            ctl.publish(SessionEnded(session="s1", reason="left"))
            await asyncio.wait_for(ctl.close(), 2)
    lost = [e for e in logs if e["event"] == "control_message_lost"]
    assert len(lost) == 1 and lost[0]["log_level"] == "error"
    assert lost[0]["kind"] == "Interrupt" and lost[0]["turn"] == 4
    assert lost[0]["session"] == "s1"
    assert [type(m).__name__ for m, _ in bus.sent] == ["SessionEnded"]
    assert bus.sent[0][1] == "s1-ctl-7-1"


@pytest.mark.fast
async def test_a_full_queue_drops_the_newest_with_an_error() -> None:
    bus = FlakyBus()
    with structlog.testing.capture_logs() as logs:
        async with control_out(bus, start=False, max_queued=2) as ctl:
            for m in msgs(3):
                ctl.publish(m)
            tasks = TaskSet("late")
            ctl.start(tasks)
            await ctl.close()
            await tasks.close()
    dropped = [e for e in logs if e["event"] == "control_message_dropped"]
    assert len(dropped) == 1 and dropped[0]["log_level"] == "error"
    assert dropped[0]["turn"] == 3 and dropped[0]["queued"] == 2
    assert [m.turn for m, _ in bus.sent] == [1, 2]


@pytest.mark.fast
async def test_a_purge_drops_everything_queued_and_everything_after() -> None:
    bus = FlakyBus(forever=True)
    async with control_out(bus, retry_s=0.2) as ctl:
        for m in msgs(3):
            ctl.publish(m)
        await asyncio.sleep(0.05)  # the first is being tried
        ctl.purge()
        ctl.publish(SessionEnded(session="s1", reason="purged"))
        bus.forever = False
        await asyncio.wait_for(ctl.close(), 2)
    assert {i for i, _ in bus.tries} == {"s1-ctl-7-0"}, "only the one in flight was tried"
    assert [m.turn for m, _ in bus.sent] == [1]


@pytest.mark.fast
async def test_close_gives_up_when_the_bus_never_comes_back() -> None:
    bus = FlakyBus(hang=True, forever=True)
    async with control_out(bus, retry_s=0.05, attempt_timeout_s=10) as ctl:
        ctl.publish(msgs(1)[0])
        await asyncio.sleep(0.01)
        t0 = asyncio.get_running_loop().time()
        await asyncio.wait_for(ctl.close(), 5)
        took = asyncio.get_running_loop().time() - t0
    assert 2.0 <= took < 3.0  # one retry deadline and two seconds, then stopped
    assert not bus.sent


async def test_on_a_real_server_each_message_is_stored_once_in_order(bus: Bus) -> None:
    sent: list[Message] = [
        SessionStarted(session="s1", at_ns=1),
        Interrupt(session="s1", turn=1, at_ns=2),
        AgentSpoke(session="s1", turn=1, text="Hel", char_end=3, interrupted=True, at_ns=3),
        SessionEnded(session="s1", reason="participant_left", at_ns=4),
    ]
    async with control_out(bus) as ctl:
        for m in sent:
            ctl.publish(m)
        await ctl.close()
    # a sender with the same ids (a retry of a copy the server already has) stores nothing new
    async with control_out(bus) as again:
        again.publish(sent[0])
        await again.close()
    got = [await bus.read(s, data) for s, data in await stored(bus, control_stream(REGION))]
    assert [m for m in got if m.session == "s1"] == sent
