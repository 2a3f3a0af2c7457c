"""One session's reply being spoken inside a TTS worker (see the stage's docstring)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

from voxbus.contracts.control import VOICE_HEADER, header
from voxbus.contracts.messages import (
    AnyMessage,
    AudioOut,
    Interrupt,
    Message,
    ReplyEnd,
    ReplyText,
)
from voxbus.runtime import metrics
from voxbus.runtime.closing import CloseReason
from voxbus.runtime.ledger import Order, ReplyKey, TurnLedger
from voxbus.runtime.scope import SessionScope
from voxbus.runtime.stage import BadInput, Context

from .clauses import Unit, UnitSplitter
from .framing import frame_audio, trim_leading_silence
from .scheduler import Synthesis
from .shared import TtsWorker

MAX_REPLY_CHARS: Final = 200_000
MAX_GAP_CHARS: Final = 8_000
# Audio per character of text (af_heart, speed 1), until a unit's real length is known: only to
# order the synthesis queue.
AUDIO_S_PER_CHAR: Final = 0.065


@dataclass(eq=False, kw_only=True)
class _Reply:
    """A reply being spoken: ``text`` so far, and how far its frames have got."""

    turn: int
    speculation: int  # the reply's ``ReplyText.speculation``: (turn, speculation) names it
    voice: str
    splitter: UnitSplitter
    origin: float  # monotonic time its first message was handled
    text: str = ""
    seq: int = 0
    spoken_end: int = 0  # text_end of the last frame yielded
    audio_ahead_s: float = 0.0  # audio of the units handed to the scheduler so far
    last_deadline: float = 0.0


class TtsSession:
    """The session's current reply; the runtime releases the session when it ends. Which reply
    comes after which, and which turns are over, is the scope's turn ledger's."""

    def __init__(self, stage: TtsWorker, scope: SessionScope) -> None:
        self.stage = stage
        self.scope = scope
        self.ledger: TurnLedger[Any] = scope.ledger
        self.reply: _Reply | None = None

    async def close(self, reason: CloseReason) -> None:
        reply, self.reply = self.reply, None
        if reply is not None and reason.rule.expired:
            # its end never came (TTS_REPLY_TTL_S without text, or its place was needed): end
            # it here, so the listener does not wait for the rest
            self.scope.log.warning("reply_expired", turn=reply.turn, spoken_end=reply.spoken_end,
                                   reason=str(reason))
            try:
                await self.scope.publish(self.stage.end_marker(
                    self.scope.session, reply.turn, reply.seq, reply.spoken_end,
                    reply.spoken_end, speculation=reply.speculation))
            except Exception as e:  # noqa: BLE001 - closing must go on
                self.scope.log.warning("reply_end_not_sent", error=repr(e))

    async def handle(self, msg: AnyMessage, ctx: Context) -> AsyncIterator[Message]:
        if isinstance(msg, Interrupt):
            self._interrupt(msg, ctx)
            return
        if isinstance(msg, ReplyText):
            async for out in self._on_text(msg, ctx):
                yield out
            return
        if isinstance(msg, ReplyEnd):
            async for out in self._on_end(msg, ctx):
                yield out
            return
        raise BadInput("unexpected_message", f"the tts stage does not take {type(msg).__name__}")

    def _interrupt(self, msg: Interrupt, ctx: Context) -> None:
        reply = self.reply
        if reply is not None and self.ledger.stale(reply.turn):  # the runtime raised the mark
            self.reply = None
            self.scope.release()
            ctx.log.info("reply_interrupted", reply_turn=reply.turn, spoken_end=reply.spoken_end,
                         frames=reply.seq)

    async def _on_text(self, msg: ReplyText, ctx: Context) -> AsyncIterator[AudioOut]:
        before = self.reply
        reply = self._reply_for(msg, ctx)
        if reply is not before:  # the previous reply is over: its text is needed no more
            await self.scope.ack_held()
        if reply is None:
            return
        piece = _place(reply, msg)
        if piece is None:
            ctx.log.info("duplicate_text_skipped", seq=msg.seq, char_end=msg.char_end)
            return
        # Kept unacked until the reply has been spoken to its end: a replica that takes the
        # session over gets the whole text again and speaks it with the same frame numbers
        # (the stream and the bridge drop the frames already out).
        ctx.hold()
        async for out in self._speak(reply, reply.splitter.push(piece), msg.session, ctx):
            yield out

    async def _on_end(self, msg: ReplyEnd, ctx: Context) -> AsyncIterator[AudioOut]:
        reply = self.reply
        if reply is not None and _order(reply, msg) is Order.OLDER:
            ctx.log.info("stale_reply_end_dropped", reply_turn=reply.turn)
            return
        reply = self._reply_for(msg, ctx)
        try:
            units: list[Unit] = []
            if reply is not None and msg.reason != "interrupted":
                if len(msg.text) > len(reply.text):
                    rest = msg.text[len(reply.text) :]
                    reply.text += rest
                    units += reply.splitter.push(rest)
                units += reply.splitter.finish()
            if reply is not None:
                async for out in self._speak(reply, units, msg.session, ctx):
                    yield out
            total = max(len(msg.text), len(reply.text) if reply is not None else 0)
            spoken = reply.spoken_end if reply is not None else 0
            yield self.stage.end_marker(msg.session, msg.turn,
                                        reply.seq if reply is not None else 0,
                                        min(spoken, total), total, speculation=msg.speculation)
            if reply is not None:
                ctx.log.info("reply_spoken", frames=reply.seq, chars=total, reason=msg.reason,
                             took_ms=round((time.monotonic() - reply.origin) * 1e3))
        finally:
            if self.reply is reply:
                self.reply = None
            await self.scope.ack_held()
            self.scope.release()

    def _reply_for(self, msg: ReplyText | ReplyEnd, ctx: Context) -> _Reply | None:
        """The session's reply ``(msg.turn, msg.speculation)``, started if new; None for a stale
        one (a reply that ``ReplyKey.rank`` puts before the current one)."""
        reply = self.reply
        if reply is not None:
            order = _order(reply, msg)
            if order is Order.SAME:
                return reply
            if order is Order.OLDER:
                ctx.log.info("stale_reply_dropped", reply_turn=reply.turn,
                             speculation=msg.speculation)
                return None
            ctx.log.warning("reply_abandoned", reply_turn=reply.turn, spoken_end=reply.spoken_end,
                            speculation=reply.speculation)
        voice = self.stage.voice
        if requested := header(ctx.headers, VOICE_HEADER):
            voice = self.stage.check_voice(requested, ctx.log)
        s = self.stage.settings
        self.reply = reply = _Reply(
            turn=msg.turn,
            speculation=msg.speculation,
            voice=voice,
            splitter=UnitSplitter(first_words=self.stage.first_words,
                                  first_lookahead=s.first_lookahead, max_chars=s.max_unit_chars,
                                  ramp=s.ramp),
            origin=time.monotonic(),
        )
        return reply

    async def _speak(
        self, reply: _Reply, units: list[Unit], session: str, ctx: Context
    ) -> AsyncIterator[AudioOut]:
        """Synthesize ``units`` (all queued at once, in deadline order) and yield their frames."""
        if not units:
            return
        scheduler = self.stage.scheduler
        pending: list[tuple[Unit, asyncio.Task[Synthesis]]] = []
        for unit in units:
            # When its audio is needed: once the reply's audio before it has played. Never before
            # an earlier unit of the same reply, which must play first anyway.
            deadline = max(reply.origin + reply.audio_ahead_s, reply.last_deadline)
            reply.last_deadline = deadline
            reply.audio_ahead_s += AUDIO_S_PER_CHAR * len(unit.text)
            task = asyncio.ensure_future(
                scheduler.synthesize(unit.text, reply.voice, deadline=deadline)
            )
            pending.append((unit, task))
        try:
            for unit, task in pending:
                synthesis = await task
                audio_s = synthesis.audio.size / self.stage.sample_rate_hz
                ctx.log.info(
                    "unit_synthesized", unit=unit.index, chars=len(unit.text),
                    audio_ms=round(audio_s * 1e3), synth_ms=round(synthesis.synth_s * 1e3),
                    queued_ms=round(synthesis.queued_s * 1e3), cached=synthesis.cached,
                    pii=unit.text,
                )
                reply.audio_ahead_s += audio_s - AUDIO_S_PER_CHAR * len(unit.text)
                for out in self._frames(reply, unit, synthesis, session):
                    yield out
        finally:
            for _, task in pending:
                task.cancel()
            await asyncio.gather(*(task for _, task in pending), return_exceptions=True)

    def _frames(
        self, reply: _Reply, unit: Unit, synthesis: Synthesis, session: str
    ) -> list[AudioOut]:
        rate = self.stage.sample_rate_hz
        audio = synthesis.audio
        if reply.seq == 0:  # the caller waits for the first sound: not for the engine's silence
            audio = trim_leading_silence(audio, sample_rate_hz=rate)
        frames = frame_audio(audio, (unit.start, unit.end), sample_rate_hz=rate,
                             frame_ms=self.stage.settings.frame_ms)
        out: list[AudioOut] = []
        if reply.seq == 0 and frames:
            metrics.STAGE_DELAY.record(time.monotonic() - reply.origin,
                                       {"stage": "tts", "step": "first_audio"})
        for frame in frames:
            out.append(AudioOut(
                session=session, turn=reply.turn, seq=reply.seq, sample_rate_hz=rate, pcm=frame.pcm,
                text_start=reply.spoken_end, text_end=max(frame.text_end, reply.spoken_end),
                emitted_ns=time.time_ns(), speculation=reply.speculation,
            ))
            reply.seq += 1
            reply.spoken_end = max(frame.text_end, reply.spoken_end)
        return out


def _order(reply: _Reply, msg: ReplyText | ReplyEnd) -> Order:
    """Where ``msg``'s reply stands against the one being spoken."""
    return TurnLedger.compare(ReplyKey(reply.turn, reply.speculation),
                              ReplyKey(msg.turn, msg.speculation))


def _place(reply: _Reply, msg: ReplyText) -> str | None:
    """Put a chunk at its offset in the reply; return the new text (None for a repeat).

    Spans are contiguous; a gap before ``char_start`` (text that never arrived) becomes spaces.
    """
    have, start = len(reply.text), msg.char_start
    if start > have:
        if start - have > MAX_GAP_CHARS:
            raise BadInput("bad_offsets", f"chunk at {start} but the reply has {have} characters")
        piece = " " * (start - have) + msg.text
    elif start + len(msg.text) <= have:
        return None if msg.text else ""
    else:
        piece = msg.text[have - start :]
    if have + len(piece) > MAX_REPLY_CHARS:
        raise BadInput("reply_too_long", f"a reply longer than {MAX_REPLY_CHARS} characters")
    reply.text += piece
    return piece
