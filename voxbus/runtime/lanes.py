"""Per-session lanes: a session's messages are handled one at a time, in order, while different
sessions run concurrently. A lane's queue is bounded; what does not fit waits with JetStream (see
``sessions``), never in front of another session."""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from voxbus.contracts.messages import AnyMessage
from voxbus.runtime.ledger import TurnLedger


class Inbound(Protocol):
    """A delivered message as the runtime acknowledges it (a JetStream message, or an in-memory
    one in ``runtime.testing``)."""

    @property
    def subject(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def num_delivered(self) -> int: ...

    @property
    def key(self) -> tuple[str, int]:
        """(stream, stream sequence): the same on a redelivery."""
        ...

    @property
    def stored_age_s(self) -> float:
        """Seconds since the message was stored (JetStream's ack timer ran at least this long)."""
        ...

    async def ack(self) -> None: ...

    async def nak(self, delay_s: float) -> None: ...

    async def term(self) -> None: ...

    async def in_progress(self) -> None: ...


@dataclass(eq=False)
class Delivery:
    inbound: Inbound
    msg: AnyMessage
    region: str
    received: float = field(default_factory=time.monotonic)
    # When JetStream's ack timer was last reset (by delivery or ``in_progress``), as far as we
    # know; the keep-alive marks the message in progress when this gets old.
    touched: float = field(default_factory=time.monotonic)

    @property
    def subject(self) -> str:
        return self.inbound.subject

    @property
    def key(self) -> tuple[str, int]:
        return self.inbound.key


class RecentKeys:
    """The last ``maxlen`` keys added, for membership tests in O(1)."""

    def __init__(self, maxlen: int) -> None:
        self._order: deque[Hashable] = deque()
        self._keys: set[Hashable] = set()
        self._maxlen = maxlen

    def add(self, key: Hashable) -> None:
        if key in self._keys:
            return
        self._order.append(key)
        self._keys.add(key)
        if len(self._order) > self._maxlen:
            self._keys.discard(self._order.popleft())

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._order)


class Outstanding:
    """Messages of one session handed back to JetStream (``nak``) and not yet taken: a later
    message of the same stream may not overtake them, so it is handed back too."""

    def __init__(self) -> None:
        self._seqs: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._seqs.values())

    def blocks(self, key: tuple[str, int]) -> bool:
        """An earlier message of this stream is still out."""
        seqs = self._seqs.get(key[0])
        return seqs is not None and bool(seqs) and seqs[0] < key[1]

    def add(self, key: tuple[str, int]) -> None:
        seqs = self._seqs.setdefault(key[0], [])
        i = bisect.bisect_left(seqs, key[1])
        if i == len(seqs) or seqs[i] != key[1]:
            seqs.insert(i, key[1])

    def discard(self, key: tuple[str, int]) -> None:
        seqs = self._seqs.get(key[0])
        if seqs:
            i = bisect.bisect_left(seqs, key[1])
            if i < len(seqs) and seqs[i] == key[1]:
                del seqs[i]


Process = Callable[[Delivery], Awaitable[None]]
Skip = Callable[[Delivery], Awaitable[None]]


class Lane:
    def __init__(
        self, session: str, *, process: Process, skip: Skip, maxsize: int,
        on_exit: Callable[[Lane], None], ledger: TurnLedger[object] | None = None,
    ) -> None:
        self.session = session
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue(maxsize)
        self.current: Delivery | None = None
        #: The session's turn ledger (the scope's): what is stale is read there.
        self.ledger: TurnLedger[object] = ledger if ledger is not None else TurnLedger()
        self._process = process
        self._skip = skip
        self.last_active = time.monotonic()
        self._on_exit = on_exit
        self._processing = False  # in ``process`` (cancellable by an interrupt), not skipping
        self._interrupting = False
        self.task: asyncio.Task[None] | None = None

    def stale(self, d: Delivery) -> bool:
        return self.ledger.stale(d.msg.turn)

    def interrupt(self, turn: int) -> None:
        """Cancel in-flight work of turns <= ``turn``; queued ones are skipped when dequeued."""
        self.ledger.interrupt(turn)
        self.cut_stale()

    def cut_stale(self) -> None:
        """Cancel the message in hand if its turn is over (the ledger's watermark rose)."""
        cur = self.current
        if (cur is not None and self._processing and not self._interrupting
                and self.stale(cur) and self.task is not None):
            # once: a second interrupt while the first one's cancel unwinds, or while the
            # message is being skipped, must not cancel the lane itself
            self._interrupting = True
            self.task.cancel()

    def pending(self) -> list[Delivery]:
        items = list(self.queue._queue)  # type: ignore[attr-defined]  # read-only peek
        return ([self.current] if self.current else []) + items

    def find(self, key: tuple[str, int]) -> Delivery | None:
        """The delivery of this stream message that the lane holds (queued or in hand), if any."""
        return next((d for d in self.pending() if d.key == key), None)

    def idle_for(self, now: float) -> float:
        """Seconds since the lane last finished a message; 0 while it has work."""
        if self.current is not None or not self.queue.empty():
            return 0.0
        return now - self.last_active

    async def run(self) -> None:
        """Handle queued messages until cancelled (the runtime cancels idle lanes)."""
        try:
            while True:
                d = await self.queue.get()
                self.current = d
                try:
                    if self.stale(d) or not await self._process_unless_interrupted(d):
                        await self._skip(d)
                finally:
                    self.current = None
                    self.last_active = time.monotonic()
                    self.queue.task_done()
        finally:
            self._on_exit(self)

    async def _process_unless_interrupted(self, d: Delivery) -> bool:
        """Process ``d``; False if an interrupt cancelled it (it is then skipped)."""
        self._processing = True
        try:
            await self._process(d)
            return True
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._interrupting or task is None or task.uncancel() > 0:
                raise  # not (only) the interrupt's cancel: the lane itself is stopped
            return False
        finally:
            self._processing = False
            self._interrupting = False

    async def drained(self) -> None:
        """Wait until everything queued so far has been handled."""
        await self.queue.join()
