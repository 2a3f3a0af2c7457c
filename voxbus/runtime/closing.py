"""Why a session closes in a worker, what becomes of its messages then, and what becomes of one
message once its handling is over: the runtime's acknowledgement rules, in two tables.

JetStream keeps a message until it is acked. A nak hands it back (redelivered, here or to the
next owner of the session); a term drops it for good. A handler may keep a handled message
unacked (``Context.hold``) until its effect is safe; the runtime decides the rest from here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from voxbus.runtime.lanes import Inbound


class Ack(enum.Enum):
    """What is done with a message JetStream delivered."""

    ACK = "ack"  # done with it: acked while this replica still owns the session
    DROP = "drop"  # acked whatever the lease says: nobody is to handle it again (purged)
    HOLD = "hold"  # handled, kept unacked by the handler until its effect is safe
    HAND_BACK = "nak"  # redelivered soon: to the next owner, or here once there is room
    TERM = "term"  # dropped for good (an error event says why)


class Outcome(enum.Enum):
    """How the handling of one message ended (``SessionLanes``)."""

    HANDLED = "handled"
    HANDLED_HELD = "handled_held"  # the handler called ``Context.hold``
    SKIPPED = "skipped"  # its turn was interrupted: acked without work
    PURGED = "purged"  # its session was purged: never handled
    LEASE_LOST = "lease_lost"  # the partition's lease went during the handler
    REJECTED = "rejected"  # bad input, retries exhausted, or the handler failed
    DEFERRED = "deferred"  # not admitted yet, or the lane is full: handed back with a delay
    REFUSED = "refused"  # not admitted within the admission timeout


#: What each outcome does to the message.
OUTCOME_ACK: dict[Outcome, Ack] = {
    Outcome.HANDLED: Ack.ACK,
    Outcome.HANDLED_HELD: Ack.HOLD,
    Outcome.SKIPPED: Ack.ACK,
    Outcome.PURGED: Ack.DROP,
    Outcome.LEASE_LOST: Ack.HAND_BACK,
    Outcome.REJECTED: Ack.TERM,
    Outcome.DEFERRED: Ack.HAND_BACK,
    Outcome.REFUSED: Ack.TERM,
}


@dataclass(frozen=True, kw_only=True)
class CloseRule:
    """What closing a session for one reason does."""

    #: Only while nothing is under way: a message that came in meanwhile keeps it open.
    only_if_quiet: bool
    #: The session stays known here, dormant with its turn ledger (it reopens on its next
    #: message); otherwise it is forgotten.
    keep_session: bool
    #: Messages still queued in its lane, never handled.
    queued: Ack
    #: Messages handled and held unacked.
    held: Ack
    #: Another replica owns the session now and redoes unfinished work: drop it, do not finish.
    handed_over: bool = False
    #: It closes for lack of input: a reply still waiting for its end is ended here.
    expired: bool = False


class CloseReason(enum.Enum):
    """Why a session's handler closes here."""

    RELEASED = "released"  # the handler holds nothing worth keeping (``SessionScope.release``)
    IDLE = "idle"  # no message for ``idle_close_s``
    EVICTED = "evicted"  # its place was needed by a session with input
    DRAINED = "drained"  # the worker is stopping, or giving the partition up
    FENCED = "fenced"  # the partition's lease may be gone: another replica may own it
    PURGED = "purged"  # the session is being erased
    VISITED = "visited"  # a handler opened for one urgent message of a session not admitted

    @property
    def rule(self) -> CloseRule:
        return CLOSE_RULES[self]

    def __str__(self) -> str:
        return self.value


CLOSE_RULES: dict[CloseReason, CloseRule] = {
    CloseReason.RELEASED: CloseRule(only_if_quiet=True, keep_session=True, queued=Ack.HAND_BACK,
                                    held=Ack.ACK),
    CloseReason.IDLE: CloseRule(only_if_quiet=True, keep_session=False, queued=Ack.HAND_BACK,
                                held=Ack.ACK, expired=True),
    CloseReason.EVICTED: CloseRule(only_if_quiet=True, keep_session=False, queued=Ack.HAND_BACK,
                                   held=Ack.ACK, expired=True),
    # the next owner replays what was queued and what the handler held
    CloseReason.DRAINED: CloseRule(only_if_quiet=False, keep_session=False,
                                   queued=Ack.HAND_BACK, held=Ack.HAND_BACK),
    CloseReason.FENCED: CloseRule(only_if_quiet=False, keep_session=False, queued=Ack.HAND_BACK,
                                  held=Ack.HAND_BACK, handed_over=True),
    # nobody is to handle any of it again
    CloseReason.PURGED: CloseRule(only_if_quiet=False, keep_session=False, queued=Ack.DROP,
                                  held=Ack.DROP),
    CloseReason.VISITED: CloseRule(only_if_quiet=False, keep_session=True, queued=Ack.HAND_BACK,
                                   held=Ack.ACK),
}


async def settle(inbound: Inbound, ack: Ack, *, hand_back_s: float = 0.1) -> None:
    """Do ``ack`` to a delivered message (not ``HOLD``: a held message stays in the scope)."""
    if ack is Ack.ACK or ack is Ack.DROP:
        await inbound.ack()
    elif ack is Ack.HAND_BACK:
        await inbound.nak(hand_back_s)
    elif ack is Ack.TERM:
        await inbound.term()
    else:
        raise ValueError(f"{ack} is not done to a message here")
