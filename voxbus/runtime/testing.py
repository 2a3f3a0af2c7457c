"""Testing stages, for voxbus and for whoever writes one.

- ``Tap``: every message published for a region, decoded, with its arrival time (on a real bus,
  or the one a ``MemoryBus`` keeps).
- ``running(bus, stage)``: the stage as a real worker on a real nats-server, for tests that prove
  a feature.
- ``StageRunner(stage)``: the stage on an in-memory bus (``MemoryBus``, ``MemoryKV``) through the
  same session machinery as a worker (lanes, handlers, admission, publish path, failure rules,
  hand-backs to "JetStream" and their redelivery), for fast unit tests of control flow.
- ``wait_until(predicate)``: wait for a condition instead of sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from voxbus.contracts.messages import AnyMessage, EndOfTurn, ErrorEvent, Message, ends_turn
from voxbus.contracts.streams import state_bucket, stream_of
from voxbus.contracts.subjects import kind_of, subject_for
from voxbus.runtime.bus import Bus
from voxbus.runtime.lanes import Delivery
from voxbus.runtime.sessions import Admission, LaneOptions, SessionLanes, SessionStats
from voxbus.runtime.stage import Stage
from voxbus.runtime.tasks import TaskSet
from voxbus.runtime.worker import Worker, WorkerOptions

M = TypeVar("M", bound=Message)


# ---- waiting -----------------------------------------------------------------------------------


async def wait_until(
    predicate: Callable[[], object], *, timeout_s: float = 10.0, step_s: float = 0.01,
    what: str | Callable[[], str] = "",
) -> float:
    """Poll ``predicate`` (a function, or a coroutine function) every ``step_s`` until what it
    returns is true; the seconds that took. After ``timeout_s`` an ``AssertionError`` says
    ``what`` (or what ``what()`` returns then): a test waits for what it means, not a fixed
    time."""
    started = time.monotonic()
    while True:
        ok = predicate()
        if inspect.isawaitable(ok):
            ok = await ok
        if ok:
            return time.monotonic() - started
        if time.monotonic() - started >= timeout_s:
            said = what() if callable(what) else what
            raise AssertionError(f"not within {timeout_s} s: {said or 'the condition'}")
        await asyncio.sleep(step_s)


# ---- observing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tapped:
    at: float  # time.monotonic() when it arrived
    subject: str
    msg: AnyMessage


class Tap:
    """Messages published for a region, in arrival order."""

    def __init__(self) -> None:
        self.entries: list[Tapped] = []
        self._subs: list[Subscription] = []

    @classmethod
    async def on_bus(cls, bus: Bus, region: str, *subjects: str) -> Self:
        """Subscribe to ``voxbus.<region>.<subject>`` for each of ``subjects`` (default ``>``)
        on a real bus."""
        tap = cls()

        async def on(raw: Msg) -> None:
            with contextlib.suppress(Exception):  # not ours to judge: bad input tests send junk
                tap.record(raw.subject, await bus.read(raw.subject, raw.data))

        for subj in subjects or (">",):
            tap._subs.append(await bus.nc.subscribe(f"voxbus.{region}.{subj}", cb=on))
        return tap

    async def close(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def record(self, subject: str, msg: AnyMessage) -> None:
        self.entries.append(Tapped(time.monotonic(), subject, msg))

    @property
    def got(self) -> list[tuple[float, AnyMessage]]:
        return [(e.at, e.msg) for e in self.entries]

    def of(self, kind: type[M], session: str | None = None, *, guesses: bool = False) -> list[M]:
        """The ``kind`` messages (of ``session``); an ``EndOfTurn`` only when committed, unless
        ``guesses`` (the speculative ones too)."""
        return [e.msg for e in self.entries if isinstance(e.msg, kind)
                and (session is None or e.msg.session == session)
                and (guesses or not isinstance(e.msg, EndOfTurn) or ends_turn(e.msg))]

    def timed(self, kind: type[M]) -> list[tuple[float, M]]:
        return [(e.at, e.msg) for e in self.entries if isinstance(e.msg, kind)]

    async def wait_for(
        self, kind: type[M], *, session: str | None = None, within_s: float = 10.0,
        where: Callable[[M], bool] | None = None,
    ) -> M:
        """The first ``kind`` message (of ``session``, matching ``where``), waiting for it."""
        deadline = time.monotonic() + within_s
        while True:
            for m in self.of(kind, session):
                if where is None or where(m):
                    return m
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no {kind.__name__} in {within_s} s")
            await asyncio.sleep(0.01)

    def arrival(self, pred: Callable[[AnyMessage], bool]) -> float:
        return next(e.at for e in self.entries if pred(e.msg))

    async def until(self, pred: Callable[[Tap], bool], timeout_s: float = 30.0) -> None:
        def seen() -> str:
            return "last seen: " + ", ".join(
                f"{type(e.msg).__name__}({e.msg.session}, {e.msg.turn})"
                for e in self.entries[-20:])

        await wait_until(lambda: pred(self), timeout_s=timeout_s, what=seen)


@contextlib.asynccontextmanager
async def running(
    bus: Bus, stage: Stage, opts: WorkerOptions | None = None
) -> AsyncIterator[Worker]:
    """``stage`` as a worker on ``bus`` (a real nats-server) until the block ends (drained)."""
    worker = Worker(bus, stage, opts)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


# ---- in memory ---------------------------------------------------------------------------------


@dataclass(slots=True)
class KvEntry:
    key: str
    value: bytes | None
    revision: int | None


class MemoryKV:
    """A KV bucket with the semantics the stages rely on (revisions, compare-and-set)."""

    def __init__(self, bucket: str, revisions: itertools.count[int]) -> None:
        self.bucket = bucket
        self._data: dict[str, tuple[bytes, int]] = {}
        self._revisions = revisions

    async def get(self, key: str) -> KvEntry:
        if key not in self._data:
            raise KeyNotFoundError
        value, rev = self._data[key]
        return KvEntry(key, value, rev)

    async def put(self, key: str, value: bytes) -> int:
        rev = next(self._revisions)
        self._data[key] = (bytes(value), rev)
        return rev

    async def create(self, key: str, value: bytes) -> int:
        if key in self._data:
            raise KeyWrongLastSequenceError
        return await self.put(key, value)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        if last is not None and self._data.get(key, (b"", 0))[1] != last:
            raise KeyWrongLastSequenceError
        return await self.put(key, value)

    async def delete(self, key: str) -> bool:
        self._data.pop(key, None)
        return True

    def keys(self) -> list[str]:
        return sorted(self._data)


class MemoryBus:
    """The part of ``Bus`` a stage uses, in memory: what is published lands in ``tap``."""

    def __init__(self, regions: list[str]) -> None:
        self.regions = list(regions)
        self.tracing = False
        self.tap = Tap()
        self._buckets: dict[str, MemoryKV] = {}
        self._revisions = itertools.count(1)
        self.headers: list[Mapping[str, str]] = []

    async def publish(
        self, region: str, msg: Message, *, headers: Mapping[str, str] | None = None,
        ack: bool | None = None,
    ) -> None:
        self.tap.record(subject_for(region, msg), msg)  # type: ignore[arg-type]
        self.headers.append(dict(headers or {}))

    async def publish_error(
        self, region: str, session: str, *, turn: int, code: str, message: str, stage: str,
        source_subject: str = "",
    ) -> None:
        await self.publish(region, ErrorEvent(
            session=session, turn=turn, code=code, message=message[:500], stage=stage,
            subject=source_subject, at_ns=time.time_ns(),
        ))

    async def kv(self, bucket: str) -> MemoryKV:
        if bucket not in self._buckets:
            self._buckets[bucket] = MemoryKV(bucket, self._revisions)
        return self._buckets[bucket]

    async def state(self, region: str) -> MemoryKV:
        return await self.kv(state_bucket(region))


@dataclass(eq=False)
class MemoryInbound:
    """An in-memory delivery: records what the runtime did with it; a ``nak`` redelivers it
    after the delay, as JetStream would."""

    runner: StageRunner
    msg: AnyMessage
    subject: str
    key: tuple[str, int]
    headers: Mapping[str, str] = field(default_factory=dict)
    num_delivered: int = 1
    stored_at: float = field(default_factory=time.monotonic)
    outcome: str = ""  # ack, term, nak

    @property
    def stored_age_s(self) -> float:
        return time.monotonic() - self.stored_at

    async def ack(self) -> None:
        self.outcome = "ack"

    async def term(self) -> None:
        self.outcome = "term"

    async def in_progress(self) -> None:
        return None

    async def nak(self, delay_s: float) -> None:
        self.outcome = "nak"
        self.runner.redeliver_later(self, delay_s)


class StageRunner:
    """One stage on a ``MemoryBus``; ``send`` delivers a message as a worker's partition would."""

    def __init__(self, stage: Stage, *, region: str = "test",
                 opts: LaneOptions | None = None) -> None:
        self.stage = stage
        self.region = region
        self.bus = MemoryBus([region])
        self.stats = SessionStats()
        self.lanes = SessionLanes(stage, self.bus, region,
                                  admission=Admission(stage.policy.max_sessions),
                                  opts=opts, stats=self.stats, name=f"runner-{stage.name}")
        self.inbound: list[MemoryInbound] = []
        self._seq = itertools.count(1)
        self._tasks = TaskSet(f"runner-{stage.name}")

    @property
    def tap(self) -> Tap:
        return self.bus.tap

    async def __aenter__(self) -> StageRunner:
        await self.stage.start()
        self._tasks.spawn(self._sweep(), name="sweep")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._tasks.close()
        await self.lanes.drain(10.0)
        await self.stage.stop()

    async def send(self, msg: AnyMessage, *, headers: Mapping[str, str] | None = None) -> None:
        kind = kind_of(type(msg))
        inbound = MemoryInbound(self, msg, subject_for(self.region, msg),
                                (stream_of(self.region, kind), next(self._seq)),
                                headers=dict(headers or {}))
        self.inbound.append(inbound)
        await self._deliver(inbound)

    async def _deliver(self, inbound: MemoryInbound) -> None:
        d = Delivery(inbound=inbound, msg=inbound.msg, region=self.region)
        if kind_of(type(inbound.msg)) in self.stage.urgent:
            await self.lanes.urgent(d)
        else:
            await self.lanes.deliver(d)

    def redeliver_later(self, inbound: MemoryInbound, delay_s: float) -> None:
        again = MemoryInbound(self, inbound.msg, inbound.subject, inbound.key,
                              headers=inbound.headers, num_delivered=inbound.num_delivered + 1,
                              stored_at=inbound.stored_at)

        async def later() -> None:
            await asyncio.sleep(delay_s)
            self.inbound.append(again)
            await self._deliver(again)

        self._tasks.spawn(later(), name="redeliver")

    async def idle(self, timeout_s: float = 30.0) -> None:
        """Until every message sent so far is settled (acked or terminated) and lanes are idle."""
        deadline = time.monotonic() + timeout_s
        while True:
            open_ = [i for i in self.inbound if i.outcome not in ("ack", "term", "nak")]
            waiting = len(self._tasks) > 1  # redeliveries pending (the sweep is always there)
            if not open_ and not waiting and not self.lanes.pending():
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"not idle after {timeout_s} s: {len(open_)} unsettled")
            await asyncio.sleep(0.01)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            self.lanes.sweep(time.monotonic())

    def outcomes(self) -> list[tuple[str, Any]]:
        return [(i.outcome, i.msg) for i in self.inbound]


async def stored(bus: Bus, stream: str, *, direct: bool = False) -> list[tuple[str, bytes]]:
    """Every message ``stream`` holds now, in stream order: (subject, payload). ``direct``:
    read by direct get (answered by the replica of the server ``bus`` is connected to)."""
    info = await bus.js.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            raw = await bus.js.get_msg(stream, seq, direct=direct)
        except Exception:  # noqa: BLE001 - deleted, or aged out meanwhile
            continue
        out.append((raw.subject or "", raw.data or b""))
    return out


async def stored_caller_frames(bus: Bus, region: str, session: str) -> list[int]:
    """The sequence numbers of ``session``'s caller frames in ``region``'s audio stream, in
    stream order (a frame stored twice shows twice)."""
    from voxbus.contracts.messages import AudioIn
    from voxbus.contracts.streams import audio_stream

    seqs = []
    for subject, data in await stored(bus, audio_stream(region)):
        msg = await bus.read(subject, data)
        if isinstance(msg, AudioIn) and msg.session == session:
            seqs.append(msg.seq)
    return seqs
