"""What a stage is: a function from one message to a stream of messages, plus its inputs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from voxbus.contracts.messages import AnyMessage, Message
from voxbus.contracts.subjects import Kind

if TYPE_CHECKING:
    from voxbus.runtime.bus import Bus


class BadInput(Exception):
    """The message is wrong and retrying won't help: answered with an error event, then dropped."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Retryable(Exception):
    """A transient failure: the runtime redelivers the message (in the session's lane, keeping
    order) with backoff, up to ``max_deliver`` attempts."""


_log = structlog.get_logger("voxbus.stage")


@dataclass
class Context:
    """What a handler knows about the message it handles."""

    bus: Bus
    region: str
    session: str
    subject: str
    headers: Mapping[str, str]
    turn: int = 0
    stage: str = ""
    attempt: int = 1

    @cached_property
    def log(self) -> Any:
        """A logger bound to the stage, session and turn (built on first use)."""
        return _log.bind(stage=self.stage, session=self.session, turn=self.turn)


class Stage(Protocol):
    """A stage worker's logic. The runtime owns the loop around it.

    ``inputs`` are handled in order, one message of a session at a time. ``urgent`` kinds
    (interrupts) bypass the session's queue: the runtime handles them as soon as they arrive, and
    for an ``Interrupt`` it first cancels the session's in-flight work for turns <= its turn,
    drops queued messages of those turns and any output of those turns not yet published.
    """

    name: str
    inputs: tuple[Kind, ...]
    urgent: tuple[Kind, ...]

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def handle(self, msg: AnyMessage, ctx: Context) -> AsyncIterator[Message]: ...
