"""What the runtime gives a session's handler (``Stage.open``): where the session is, the bus,
its turn ledger, the publish path for messages produced outside ``handle``, the messages held
unacked, and the tasks closed with the session."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from voxbus.contracts.messages import Message
from voxbus.runtime.closing import Ack
from voxbus.runtime.lanes import Delivery
from voxbus.runtime.ledger import TurnLedger
from voxbus.runtime.ports import StageBus
from voxbus.runtime.tasks import TaskSet

log = structlog.get_logger("voxbus.sessions")


class SessionScope:
    """What the runtime gives a session's handler: where it is, the bus, the publish path for
    messages it produces outside ``handle`` (a final decoded in the background), and a task set
    closed with the session."""

    def __init__(self, *, bus: StageBus, region: str, session: str, stage: str,
                 owned: Callable[[], bool] = lambda: True) -> None:
        self.bus = bus
        self._owned = owned
        self.region = region
        self.session = session
        self.stage = stage
        self.log: Any = log.bind(stage=stage, region=region, session=session)
        self.tasks = TaskSet(f"{stage}-{session}")
        #: The session's turns as this worker knows them (the interrupt watermark is the
        #: runtime's to raise; guesses are the stage's).
        self.ledger: TurnLedger[Any] = TurnLedger()
        self.release_requested = False
        #: The partition's lease may be gone: nothing more is published from here.
        self.fenced = False
        #: The session is being purged: nothing more is published for it, from anywhere.
        self.purged = False
        #: Messages handled and held unacked (``Context.hold``), oldest first.
        self.held: OrderedDict[tuple[str, int], Delivery] = OrderedDict()

    @property
    def owned(self) -> bool:
        """This replica still holds the session's partition for certain."""
        if self.purged:
            return False
        if self.fenced or not self._owned():
            self.fenced = True
            return False
        return True

    def stale(self, msg: Message) -> bool:
        """A message of a turn that was interrupted: not to be published."""
        return not self.owned or self.ledger.stale(msg.turn)

    async def publish(self, msg: Message) -> bool:
        """Publish a message of this session produced outside ``handle``; False if its turn was
        interrupted (dropped). Traced like any publish outside a handler (``tracing.publishing``:
        a producer span in the turn's trace). Bus errors propagate."""
        if self.stale(msg):
            self.log.info("stale_output_dropped", out_turn=msg.turn, kind=type(msg).__name__)
            return False
        await self.bus.publish(self.region, msg)  # with a producer span in the turn's trace
        return True

    async def ack_held(self, count: int | None = None) -> int:
        """Ack the ``count`` oldest held messages (all without ``count``). Nothing is acked
        once the partition's lease is in doubt: the next owner must get them again."""
        n = 0
        while self.held and (count is None or n < count) and self.owned:
            _key, d = self.held.popitem(last=False)
            await d.inbound.ack()
            n += 1
        return n

    async def drop_held(self) -> None:
        """Ack the held messages whatever the lease says: nobody is to handle them again (the
        session is being purged)."""
        held, self.held = list(self.held.values()), OrderedDict()
        for d in held:
            await d.inbound.ack()

    async def hand_back_held(self) -> None:
        """Give the held messages back to JetStream (the next owner of the session replays
        them)."""
        held, self.held = list(self.held.values()), OrderedDict()
        for d in held:
            await d.inbound.nak(0.1)

    async def settle_held(self, ack: Ack) -> None:
        """The session closes: its held messages go the way its close rule says."""
        if ack is Ack.HAND_BACK:  # the next owner replays them
            await self.hand_back_held()
        elif ack is Ack.DROP:  # nobody is to handle them again
            await self.drop_held()
        else:  # the handler is done with them
            await self.ack_held()

    async def publish_error(self, *, turn: int, code: str, message: str) -> None:
        await self.bus.publish_error(self.region, self.session, turn=turn, code=code,
                                     message=message, stage=self.stage)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """A background task of this session, cancelled when the session closes."""
        return self.tasks.spawn(coro, name=name)

    def release(self) -> None:
        """The handler holds nothing worth keeping: close it once the messages queued so far are
        handled (a new one opens with the session's next message)."""
        self.release_requested = True
