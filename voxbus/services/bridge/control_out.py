"""A caller session's control messages to the bus: in order, from one task, each waiting for it.

Control messages (``SessionStarted``, ``Interrupt``, ``AgentSpoke``, ``SessionEnded``...) are few
and each one matters, so unlike the caller's audio they are not dropped while the bus is down:
they queue (bounded) and each is retried until a deadline. A retry after a timeout may follow a
copy that nats-py buffered while reconnecting, so every message carries its own ``Nats-Msg-Id``
and JetStream stores it once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Protocol

import nats.errors
import structlog

from voxbus.contracts.messages import Message
from voxbus.runtime.tasks import TaskSet, cancel_and_wait

#: How long a control message waits for the bus to come back before it is given up.
CTL_RETRY_S = 15.0
#: Control messages waiting for the bus, at most (a few per turn: room for many turns).
CTL_QUEUE = 1024
#: The pause between two tries of one message.
RETRY_PAUSE_S = 0.2


class Publisher(Protocol):
    """What is needed of the bus (``runtime.bus.Bus``)."""

    async def publish(
        self, region: str, msg: Message, *, headers: Mapping[str, str] | None = None
    ) -> None: ...


class ControlOut:
    """Publishes ``publish``'s messages in order, one at a time, until ``close``.

    ``msg_id_prefix`` names this sender uniquely (the session and when it started): message
    ``n`` goes out with ``Nats-Msg-Id: <prefix>-<n>``."""

    def __init__(
        self,
        bus: Publisher,
        region: str,
        *,
        msg_id_prefix: str,
        attempt_timeout_s: float,
        log: structlog.typing.FilteringBoundLogger,
        retry_s: float = CTL_RETRY_S,
        max_queued: int = CTL_QUEUE,
        retry_pause_s: float = RETRY_PAUSE_S,
    ) -> None:
        self.bus = bus
        self.region = region
        self.msg_id_prefix = msg_id_prefix
        self.attempt_timeout_s = attempt_timeout_s
        self.retry_s = retry_s
        self.retry_pause_s = retry_pause_s
        self.log = log
        self.purged = False  # being purged: nothing more is published
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue(max_queued)
        self._task: asyncio.Task[None] | None = None

    def start(self, tasks: TaskSet, *, name: str = "ctl") -> None:
        """Start publishing, in a task of ``tasks`` (its owner's)."""
        self._task = tasks.spawn(self._run(), name=name)

    def publish(self, msg: Message) -> None:
        """Queue ``msg``; never waits. Dropped, with an error log, when the queue is full."""
        if self.purged:
            return
        try:
            self._queue.put_nowait(msg)
        except asyncio.QueueFull:  # the bus has been down for long: this one is lost
            self.log.error("control_message_dropped", kind=type(msg).__name__, turn=msg.turn,
                           queued=self._queue.qsize())

    def purge(self) -> None:
        """The session is being purged: drop what is queued and publish nothing more (a message
        being tried now is still tried)."""
        self.purged = True
        while not self._queue.empty():
            self._queue.get_nowait()

    async def close(self) -> None:
        """Publish what is queued, then stop; past one retry deadline (and a little), stop
        anyway."""
        try:
            async with asyncio.timeout(self.retry_s + 2):
                await self._queue.put(None)  # after what is queued: the loop ends once it is out
                if self._task is not None:
                    await asyncio.shield(self._task)
        except TimeoutError:
            await cancel_and_wait(self._task)

    async def _run(self) -> None:
        n = 0
        while (msg := await self._queue.get()) is not None:
            headers = {"Nats-Msg-Id": f"{self.msg_id_prefix}-{n}"}
            n += 1
            await self._send(msg, headers)

    async def _send(self, msg: Message, headers: Mapping[str, str]) -> None:
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                async with asyncio.timeout(self.attempt_timeout_s):
                    await self.bus.publish(self.region, msg, headers=headers)
                return
            except (TimeoutError, nats.errors.Error) as e:
                if time.monotonic() >= deadline:
                    self.log.error("control_message_lost", kind=type(msg).__name__,
                                   turn=msg.turn, error=repr(e))
                    return
                await asyncio.sleep(self.retry_pause_s)
