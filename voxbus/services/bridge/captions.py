"""A caller session's captions: LiveKit text streams on topic ``lk.transcription``.

The caller's final transcripts go out as one finished stream each, in the caller's name. The
agent's reply to a turn is one stream, written as its text arrives and closed when the reply
ends, with ``voxbus.interrupted`` and ``voxbus.char_end`` (what was heard) when it was cut off.

Captions are a courtesy: they are written by one task from a bounded queue, in order, each
within a few seconds, and a caption that cannot be written is dropped with a warning. Nothing
here ever takes the session down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from voxbus.contracts.messages import Transcript
from voxbus.runtime.tasks import TaskSet

#: Captions waiting to be written, at most.
CAPTION_QUEUE = 256
#: How long one caption may take to write.
CAPTION_TIMEOUT_S = 5.0


class TextWriter(Protocol):
    """One text stream being written (``rtc.TextStreamWriter``)."""

    async def write(self, text: str) -> None: ...

    async def aclose(self, *, attributes: dict[str, str] | None = None) -> None: ...


class TextSender(Protocol):
    """What captions need of the room's local participant (``rtc.LocalParticipant``)."""

    async def stream_text(
        self, *, topic: str, attributes: dict[str, str] | None = None,
        sender_identity: str | None = None,
    ) -> TextWriter: ...


@dataclass
class _AgentCaption:
    """The caption of the agent's reply to one turn."""

    writer: TextWriter | None = None
    ended: bool = False


class Captions:
    def __init__(
        self,
        participant: TextSender,
        *,
        session: str,
        caller_identity: str,
        agent_track_sid: Callable[[], str],
        log: structlog.typing.FilteringBoundLogger,
        topic: str = "lk.transcription",
        enabled: bool = True,
        max_queued: int = CAPTION_QUEUE,
    ) -> None:
        self.participant = participant
        self.session = session
        self.caller_identity = caller_identity
        self.agent_track_sid = agent_track_sid
        self.log = log
        self.topic = topic
        self.enabled = enabled
        self._queue: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue(max_queued)
        self._agent: dict[int, _AgentCaption] = {}  # turn -> its reply's caption

    def start(self, tasks: TaskSet, *, name: str = "captions") -> None:
        """Start writing, in a task of ``tasks`` (its owner's: it ends when they close)."""
        tasks.spawn(self._run(), name=name)

    async def flush(self) -> None:
        """Wait until every caption queued so far is written (or given up)."""
        await self._queue.join()

    def user(self, t: Transcript, *, track_sid: str) -> None:
        """The caller's final transcript ``t``, of their microphone track ``track_sid``."""
        attrs = {
            "lk.transcription_final": "true",
            "lk.segment_id": f"{self.session}-user-{t.turn}-{t.seq}",
            "lk.transcribed_track_id": track_sid,
            "voxbus.turn": str(t.turn),
        }

        async def job() -> None:
            w = await self.participant.stream_text(topic=self.topic, attributes=attrs,
                                                   sender_identity=self.caller_identity)
            await w.write(t.text)
            await w.aclose()

        self._put(job)
        self.log.debug("user_caption", turn=t.turn, pii={"text": t.text})

    def agent(self, turn: int, text: str) -> None:
        """More of the agent's reply to ``turn``: its stream opens with the first text."""
        cap = self._caption(turn)

        async def job() -> None:
            if cap.writer is None:
                cap.writer = await self.participant.stream_text(
                    topic=self.topic,
                    attributes={
                        "lk.transcription_final": "false",
                        "lk.segment_id": f"{self.session}-agent-{turn}",
                        "lk.transcribed_track_id": self.agent_track_sid(),
                        "voxbus.turn": str(turn),
                    },
                )
            await cap.writer.write(text)

        self._put(job)

    def agent_end(self, turn: int, *, interrupted: bool, char_end: int = 0) -> None:
        """The reply to ``turn`` ended (``interrupted``: the caller heard ``char_end``
        characters of it); its stream closes. Only the first end of a reply counts."""
        cap = self._caption(turn)
        if cap.ended:
            return
        cap.ended = True
        attrs = {"lk.transcription_final": "true"}
        if interrupted:
            attrs |= {"voxbus.interrupted": "true", "voxbus.char_end": str(char_end)}

        async def job() -> None:
            if cap.writer is not None:
                w, cap.writer = cap.writer, None
                await w.aclose(attributes=attrs)

        self._put(job)

    def _caption(self, turn: int) -> _AgentCaption:
        cap = self._agent.get(turn)
        if cap is None:
            cap = self._agent[turn] = _AgentCaption()
            # Old captions that ended are forgotten (as the session forgets old replies).
            for t in [t for t, c in self._agent.items() if c.ended and t < turn - 2]:
                del self._agent[t]
        return cap

    def _put(self, job: Callable[[], Awaitable[None]]) -> None:
        if not self.enabled:
            return
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.log.warning("caption_dropped")

    async def _run(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                async with asyncio.timeout(CAPTION_TIMEOUT_S):
                    await job()
            except Exception as e:  # noqa: BLE001 - captions never take the session down
                self.log.warning("caption_failed", error=repr(e))
            finally:
                self._queue.task_done()
