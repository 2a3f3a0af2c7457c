"""What a stage is: per-session handlers from one message to a stream of messages, plus the
inputs it takes and how many sessions a worker holds.

The runtime owns the session: it opens a stage's ``SessionHandler`` when a session's first
message arrives (once the worker admits the session), hands it the session's messages in order,
publishes what it yields, and closes it when the session goes idle, the handler releases it, the
partition moves to another replica or the worker stops. Work a handler does in the background
(a final transcript decoded after the frame that ended the turn) goes out through its
``SessionScope``: the same publish path, stale-turn filter and spans as yielded messages, and its
tasks are owned by the scope.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import structlog

from voxbus.contracts.messages import AnyMessage, Message
from voxbus.contracts.subjects import Kind
from voxbus.runtime.closing import CloseReason
from voxbus.runtime.ports import KeyValueStore as KeyValueStore
from voxbus.runtime.ports import KvEntry as KvEntry
from voxbus.runtime.ports import StageBus as StageBus
from voxbus.runtime.scope import SessionScope


class BadInput(Exception):
    """The message is wrong and retrying won't help: answered with an error event, then dropped."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Retryable(Exception):
    """A transient failure: the runtime redelivers the message (in the session's lane, keeping
    order) with backoff, up to ``max_deliver`` attempts."""


# ---- stages ---------------------------------------------------------------------------------


_log = structlog.get_logger("voxbus.stage")


@dataclass
class Context:
    """What a handler knows about the message it handles."""

    bus: StageBus
    region: str
    session: str
    subject: str
    headers: Mapping[str, str]
    turn: int = 0
    stage: str = ""
    attempt: int = 1
    #: ``hold``: not acked when ``handle`` returns (see ``SessionScope.held``).
    held: bool = False

    def hold(self) -> None:
        """Keep this message unacked after ``handle``: it waits in ``SessionScope.held`` until
        the handler acks it (``SessionScope.ack_held``), so if this replica dies first, the one
        that takes the session over gets it again. For input whose effect lives only in memory
        until something later makes it safe (STT's frames until their turn is published)."""
        self.held = True

    @cached_property
    def log(self) -> Any:
        """A logger bound to the stage, session and turn (built on first use)."""
        return _log.bind(stage=self.stage, session=self.session, turn=self.turn)


@dataclass(frozen=True, kw_only=True)
class SessionPolicy:
    """How a worker holds a stage's sessions.

    ``max_sessions``: sessions with an open handler at once (0: no limit); a further session
    waits (its messages are left with JetStream and come back later, so it never holds up the
    other sessions of its partition) up to ``admit_timeout_s``, then its messages are refused
    with a ``<stage>_busy`` error event until a place is free. ``idle_close_s``: a session
    without a message for this long is closed (a handler reporting ``busy`` stays open).
    ``evict_idle_s``: when every place is taken, a session without a message for this long
    (and not ``busy``) is closed to make room for one that has input (0: never): a caller's
    line sends frames all the time, so a session that went quiet is gone or was never real.
    ``evict_unheard_s``: the same for a session whose handler says it holds nothing worth a
    place (``unheard``: the STT's before any speech), after only this long; such sessions go
    first, so a flood of sessions that send a frame and nothing more never keeps a caller out.
    """

    max_sessions: int = 0
    admit_timeout_s: float = 5.0
    idle_close_s: float = 30.0
    evict_idle_s: float = 2.0
    evict_unheard_s: float = 0.1

    def __post_init__(self) -> None:
        if self.max_sessions < 0 or self.admit_timeout_s < 0 or self.idle_close_s <= 0 or (
            self.evict_idle_s < 0 or self.evict_unheard_s < 0
        ):
            raise ValueError("max_sessions >= 0, admit_timeout_s >= 0, idle_close_s > 0, "
                             "evict_idle_s >= 0 and evict_unheard_s >= 0")


class SessionHandler(Protocol):
    """One session's state inside one worker, opened by ``Stage.open``.

    ``handle`` gets the session's messages one at a time, in order (and urgent ones as they
    arrive); what it yields is published. ``close`` ends the session here: finish or drop
    background work (bounded), give resources back. ``busy`` (optional attribute or property):
    work is still under way in the background, so the session is not idle.
    """

    def handle(self, msg: AnyMessage, ctx: Context) -> AsyncIterator[Message]: ...

    async def close(self, reason: CloseReason) -> None: ...


class Stage(Protocol):
    """A stage worker's logic. The runtime owns the loop around it.

    Optional: ``refused(msg) -> Sequence[Message]``, what to publish for a message the worker
    refused (no place for its session), e.g. the end marker of a reply that will not be spoken.

    ``inputs`` are handled in order, one message of a session at a time. ``urgent`` kinds
    (interrupts) bypass the session's queue: the runtime handles them as soon as they arrive, and
    for an ``Interrupt`` it first cancels the session's in-flight work for turns <= its turn,
    drops queued messages of those turns and any output of those turns not yet published.
    """

    name: str
    inputs: tuple[Kind, ...]
    urgent: tuple[Kind, ...]
    policy: SessionPolicy

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def open(self, scope: SessionScope) -> SessionHandler: ...


class _Forward:
    """A session handler that hands every message to a stage-wide function."""

    def __init__(self, handle: Callable[[AnyMessage, Context], AsyncIterator[Message]]) -> None:
        self.handle = handle

    async def close(self, reason: CloseReason) -> None:
        return None


class StatelessStage:
    """Base of a stage that keeps nothing per session (its state is on the bus, or there is
    none): subclasses implement ``handle``; each session's handler forwards to it."""

    name: str = "stateless"
    inputs: tuple[Kind, ...] = ()
    urgent: tuple[Kind, ...] = ()
    policy: SessionPolicy = SessionPolicy()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def handle(self, msg: AnyMessage, ctx: Context) -> AsyncIterator[Message]:
        raise NotImplementedError

    async def open(self, scope: SessionScope) -> SessionHandler:
        return _Forward(self.handle)
