"""The order of a session across a takeover.

When a replica dies (or freezes) holding messages it had not acked, JetStream redelivers them
only when their ack timer runs out, while new messages of the same sessions flow to the new owner
at once; handled as they come, a session's frames would be handled out of order (a survivor's STT
would hear the end of a sentence before its middle). Redeliveries themselves come in no set order.

So a partition starts behind a barrier, one per consumer: every message is held back until the
consumer has nothing outstanding that this replica does not hold (``num_ack_pending`` at most the
messages held), then they go through sorted by stream sequence (the order they were published
in) and the barrier is gone for the partition's life. After a clean hand-over (the previous
owner drained) nothing is outstanding and the barrier opens on its first check; after a kill it
waits for the dead replica's ack timers (``ack_wait`` from its last sign of life).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from voxbus.runtime.transient import missing_consumer, transient

log = structlog.get_logger("voxbus.takeover")

Handler = Callable[[Msg], Awaitable[None]]


@dataclass(eq=False)
class Held:
    """A message held back; the keep-alive marks it in progress like any message taken."""

    raw: Msg
    touched: float = field(default_factory=time.monotonic)

    async def in_progress(self) -> None:
        await self.raw.in_progress()

    @property
    def inbound(self) -> Held:
        return self


class Barrier:
    def __init__(self, js: JetStreamContext, *, stream: str, consumer: str, handler: Handler,
                 check_s: float = 0.1) -> None:
        self._js = js
        self.stream = stream
        self.consumer = consumer
        self._handler = handler
        self._check_s = check_s
        self.open = False
        self._held: dict[int, Held] = {}  # stream sequence -> the latest delivery of it
        self.started = time.monotonic()

    @property
    def held(self) -> list[Held]:
        return list(self._held.values())

    def take_held(self) -> list[Held]:
        held, self._held = sorted(self._held.items()), {}
        return [h for _seq, h in held]

    async def on_msg(self, raw: Msg) -> None:
        """The pull consumer's handler while this partition exists."""
        if self.open:
            await self._handler(raw)
        else:
            self._held[raw.metadata.sequence.stream] = Held(raw)

    async def _check(self) -> bool:
        # Counted before asking: everything held now was delivered before the server answers,
        # so it is among the pending it counts; equal counts mean nothing is pending elsewhere.
        # (Counted after, a message arriving meanwhile would stand in for one still elsewhere.)
        held = len(self._held)
        info = await self._js.consumer_info(self.stream, self.consumer)
        return (info.num_ack_pending or 0) <= held

    async def run(self) -> None:
        """Check until the barrier opens, then pass the held-back messages on, in order."""
        while True:
            try:
                if await self._check():
                    break
            except Exception as e:  # noqa: BLE001 - classified below
                # A consumer not there (yet) is waited for too: after a store came back empty,
                # a partition can be taken before this worker made its consumers again (the
                # partition's puller makes them when its first request finds none). Ending
                # here would leave the partition holding every message back for good.
                if not transient(e) and not missing_consumer(e):
                    raise
            await asyncio.sleep(self._check_s)
        passed = 0
        while held := self.take_held():  # what comes while these pass is held, then passes
            for h in held:  # (a handler may wait: for the session's key, for a full lane)
                await self._handler(h.raw)
            passed += len(held)
        self.open = True  # from here on, messages pass as they come (after the held ones)
        waited = time.monotonic() - self.started
        if waited > 2 * self._check_s:
            log.info("takeover_barrier_opened", stream=self.stream, consumer=self.consumer,
                     waited_s=round(waited, 2), held=passed)
