"""Per-session lanes: a session's messages are handled one at a time, in order, while different
sessions run concurrently. A lane's queue is bounded (backpressure) and its task ends when idle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nats.aio.msg import Msg

from contracts.messages import AnyMessage


@dataclass(eq=False)
class Delivery:
    raw: Msg
    msg: AnyMessage
    region: str
    subject: str
    received: float = field(default_factory=time.monotonic)
    touched: float = field(default_factory=time.monotonic)


Process = Callable[[Delivery], Awaitable[None]]
Skip = Callable[[Delivery], Awaitable[None]]


class Lane:
    def __init__(
        self, session: str, *, process: Process, skip: Skip, maxsize: int,
        on_exit: Callable[[Lane], None],
    ) -> None:
        self.session = session
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue(maxsize)
        self.current: Delivery | None = None
        self.interrupted_turn = 0
        self._process = process
        self._skip = skip
        self.last_active = time.monotonic()
        self._on_exit = on_exit
        self._interrupting = False
        self.task: asyncio.Task[None] | None = None

    def stale(self, d: Delivery) -> bool:
        return 0 < d.msg.turn <= self.interrupted_turn

    def interrupt(self, turn: int) -> None:
        """Cancel in-flight work of turns <= ``turn``; queued ones are skipped when dequeued."""
        self.interrupted_turn = max(self.interrupted_turn, turn)
        cur = self.current
        if cur is not None and self.stale(cur) and self.task is not None:
            self._interrupting = True
            self.task.cancel()

    def pending(self) -> list[Delivery]:
        items = list(self.queue._queue)  # type: ignore[attr-defined]  # read-only peek
        return ([self.current] if self.current else []) + items

    def idle_for(self, now: float) -> float:
        """Seconds since the lane last finished a message; 0 while it has work."""
        if self.current is not None or not self.queue.empty():
            return 0.0
        return now - self.last_active

    async def run(self) -> None:
        """Handle queued messages until cancelled (the worker cancels idle lanes)."""
        try:
            while True:
                d = await self.queue.get()
                self.current = d
                try:
                    if self.stale(d):
                        await self._skip(d)
                    else:
                        await self._process(d)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if not self._interrupting or task is None:
                        raise
                    self._interrupting = False
                    task.uncancel()
                    await self._skip(d)
                finally:
                    self.current = None
                    self.last_active = time.monotonic()
                    self.queue.task_done()
        finally:
            self._on_exit(self)

    async def drained(self) -> None:
        """Wait until everything queued so far has been handled."""
        await self.queue.join()
