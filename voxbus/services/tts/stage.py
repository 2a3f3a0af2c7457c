"""The TTS stage: reply text in, 20 ms PCM16 frames at 24 kHz out, unit by unit as text arrives.

Per session, one reply (turn) at a time is kept: its text (at the ``ReplyText`` offsets) and a
``UnitSplitter``. Each chunk's complete units go to the worker-wide ``SynthScheduler`` at once
(so the next unit is synthesized while this one's frames are published), and each unit's frames
are yielded as soon as it is synthesized: the bridge paces playback. ``ReplyEnd`` flushes the
rest and ends with an empty ``AudioOut(last=True)`` whose ``text_end`` is the reply's length.

Frames carry contiguous ``seq`` from 0 per turn and text spans that tile the reply: a frame
starts where the previous one ended, so text with nothing to say (an emoji, "...") is covered by
the next frame with audio, or by the final marker.

Barge-in: the runtime cancels the running handler of an interrupted turn and drops its unpublished
output; cancelling aborts the unit's job (a running Kokoro forward pass stops within a few ms, a
queued one never starts). The ``Interrupt`` itself drops the turn's state.

Voice: ``TTS_VOICE``, or per reply a ``Voxbus-Voice`` header on its first message
(``contracts.control.VOICE_HEADER``). An unknown voice falls back to the default one, with a
warning.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final

import structlog

from voxbus.contracts.control import VOICE_HEADER, header
from voxbus.contracts.messages import AnyMessage, AudioOut, Interrupt, Message, ReplyEnd, ReplyText
from voxbus.contracts.subjects import Kind
from voxbus.runtime.stage import BadInput, Context

from .clauses import Unit, UnitSplitter
from .engine import SAMPLE_RATE_HZ, KokoroEngine, Synthesizer, voice_or_default
from .framing import frame_audio
from .scheduler import SchedulerStats, Synthesis, SynthScheduler
from .settings import TtsSettings

log = structlog.get_logger("voxbus.tts")

MAX_REPLY_CHARS: Final = 200_000
MAX_GAP_CHARS: Final = 8_000
# Audio per character of text (af_heart, speed 1), until a unit's real length is known: only to
# order the synthesis queue.
AUDIO_S_PER_CHAR: Final = 0.065
_REFUSED_KEPT: Final = 1024


@dataclass(eq=False, kw_only=True)
class _Reply:
    """A reply being spoken: ``text`` so far, and how far its frames have got."""

    turn: int
    voice: str
    splitter: UnitSplitter
    origin: float  # monotonic time its first message was handled
    text: str = ""
    seq: int = 0
    spoken_end: int = 0  # text_end of the last frame yielded
    audio_ahead_s: float = 0.0  # audio of the units handed to the scheduler so far
    last_deadline: float = 0.0
    touched: float = field(default_factory=time.monotonic)


class TtsStage:
    name = "tts"
    inputs: tuple[Kind, ...] = (Kind.REPLY,)
    urgent: tuple[Kind, ...] = (Kind.INTERRUPT,)

    def __init__(self, settings: TtsSettings, *, engine: Synthesizer | None = None) -> None:
        """``engine``: an already loaded engine (tests, benchmarks); else Kokoro per settings."""
        self.settings = settings
        self._engine = engine
        self._scheduler: SynthScheduler | None = None
        self._voice = settings.voice
        self._replies: dict[str, _Reply] = {}
        self._refused: OrderedDict[str, int] = OrderedDict()
        self._freed = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the model (unless given) and warm it up, off the event loop."""
        started = time.monotonic()
        if self._engine is None:
            self._engine = await asyncio.to_thread(self._load)
        engine = self._engine
        self._voice = self._check_voice(self.settings.voice, log)
        await asyncio.to_thread(engine.warmup)
        self._scheduler = SynthScheduler(
            engine,
            workers=self.settings.synth_workers,
            cache_entries=self.settings.cache_entries,
            cache_max_chars=self.settings.cache_max_chars,
        )
        self._scheduler.start()
        log.info("tts_ready", voice=self._voice, ready_ms=round((time.monotonic() - started) * 1e3),
                 synth_workers=self.settings.synth_workers,
                 intra_op_threads=self.settings.intra_op_threads)

    async def stop(self) -> None:
        if self._scheduler is not None:
            await self._scheduler.close()
            self._scheduler = None
        self._replies.clear()

    def _load(self) -> KokoroEngine:
        s = self.settings
        return KokoroEngine(
            model_path=s.model_path,
            speed=s.speed,
            intra_op_threads=s.intra_op_threads,
            providers=s.providers,
            spin=s.spin,
        )

    @property
    def engine(self) -> Synthesizer:
        if self._engine is None:
            raise RuntimeError("TtsStage.start() was not called")
        return self._engine

    @property
    def stats(self) -> SchedulerStats:
        return self._ready().stats

    def _ready(self) -> SynthScheduler:
        if self._scheduler is None:
            raise RuntimeError("TtsStage.start() was not called")
        return self._scheduler

    def _check_voice(self, voice: str, logger: structlog.typing.FilteringBoundLogger) -> str:
        assert self._engine is not None
        chosen = voice_or_default(self._engine, voice)
        if chosen != voice:
            logger.warning("unknown_voice", voice=voice, fallback=chosen,
                           available=list(self._engine.voices))
        return chosen

    # -- messages -------------------------------------------------------------------------------

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
        reply = self._replies.get(msg.session)
        if reply is not None and reply.turn <= msg.turn:
            self._drop(msg.session, reply)
            ctx.log.info("reply_interrupted", reply_turn=reply.turn, spoken_end=reply.spoken_end,
                         frames=reply.seq)
        if self._refused.get(msg.session, msg.turn + 1) <= msg.turn:
            del self._refused[msg.session]

    async def _on_text(self, msg: ReplyText, ctx: Context) -> AsyncIterator[AudioOut]:
        reply = await self._reply_for(msg, ctx)
        if reply is None:
            return
        piece = _place(reply, msg)
        if piece is None:
            ctx.log.info("duplicate_text_skipped", seq=msg.seq, char_end=msg.char_end)
            return
        units = reply.splitter.push(piece)
        async for out in self._speak(reply, units, msg.session, ctx):
            yield out

    async def _on_end(self, msg: ReplyEnd, ctx: Context) -> AsyncIterator[AudioOut]:
        reply = self._replies.get(msg.session)
        if reply is not None and reply.turn > msg.turn:
            ctx.log.info("stale_reply_end_dropped", reply_turn=reply.turn)
            return
        refused = self._refused.get(msg.session) == msg.turn
        if refused:
            del self._refused[msg.session]
            reply = None
        else:
            reply = await self._reply_for(msg, ctx)
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
            yield AudioOut(
                session=msg.session, turn=msg.turn, seq=reply.seq if reply is not None else 0,
                sample_rate_hz=self._sample_rate_hz(), pcm=b"", text_start=min(spoken, total),
                text_end=total, last=True, emitted_ns=time.time_ns(),
            )
            if reply is not None:
                ctx.log.info("reply_spoken", frames=reply.seq, chars=total, reason=msg.reason,
                             took_ms=round((time.monotonic() - reply.origin) * 1e3))
        finally:
            if reply is not None:
                self._drop(msg.session, reply)

    # -- replies --------------------------------------------------------------------------------

    async def _reply_for(self, msg: ReplyText | ReplyEnd, ctx: Context) -> _Reply | None:
        """The session's reply for ``msg.turn``, started if new; None for a stale or refused one."""
        session = msg.session
        reply = self._replies.get(session)
        if reply is not None:
            if reply.turn == msg.turn:
                reply.touched = time.monotonic()
                return reply
            if reply.turn > msg.turn:
                ctx.log.info("stale_reply_dropped", reply_turn=reply.turn)
                return None
            ctx.log.warning("reply_abandoned", reply_turn=reply.turn, spoken_end=reply.spoken_end)
            self._drop(session, reply)
        if self._refused.get(session) == msg.turn:
            return None
        await self._admit(msg, ctx)
        voice = self._voice
        if requested := header(ctx.headers, VOICE_HEADER):
            voice = self._check_voice(requested, ctx.log)
        s = self.settings
        reply = _Reply(
            turn=msg.turn,
            voice=voice,
            splitter=UnitSplitter(first_words=s.first_words, max_chars=s.max_unit_chars,
                                  ramp=s.ramp),
            origin=time.monotonic(),
        )
        self._replies[session] = reply
        self._refused.pop(session, None)
        return reply

    async def _admit(self, msg: ReplyText | ReplyEnd, ctx: Context) -> None:
        """Wait for a free reply slot (``max_sessions``), up to ``admit_timeout_s``."""
        limit = self.settings.max_sessions
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.admit_timeout_s
        while len(self._replies) >= limit:
            self._evict_idle()
            remaining = deadline - loop.time()
            if len(self._replies) < limit:
                break
            if remaining <= 0:
                self._refused[msg.session] = msg.turn
                while len(self._refused) > _REFUSED_KEPT:
                    self._refused.popitem(last=False)
                ctx.log.warning("tts_busy", replies=len(self._replies), limit=limit)
                raise BadInput("tts_busy", f"this tts worker already speaks {limit} replies")
            self._freed.clear()
            try:
                await asyncio.wait_for(self._freed.wait(), remaining)
            except TimeoutError:
                pass

    def _evict_idle(self) -> None:
        now = time.monotonic()
        for session, reply in list(self._replies.items()):
            if now - reply.touched > self.settings.reply_ttl_s:
                log.warning("reply_expired", session=session, turn=reply.turn)
                self._drop(session, reply)

    def _drop(self, session: str, reply: _Reply) -> None:
        if self._replies.get(session) is reply:
            del self._replies[session]
            self._freed.set()

    # -- synthesis ------------------------------------------------------------------------------

    async def _speak(
        self, reply: _Reply, units: list[Unit], session: str, ctx: Context
    ) -> AsyncIterator[AudioOut]:
        """Synthesize ``units`` (all queued at once, in deadline order) and yield their frames."""
        if not units:
            return
        scheduler = self._ready()
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
                audio_s = synthesis.audio.size / self._sample_rate_hz()
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
        rate = self._sample_rate_hz()
        frames = frame_audio(synthesis.audio, (unit.start, unit.end), sample_rate_hz=rate,
                             frame_ms=self.settings.frame_ms)
        out: list[AudioOut] = []
        for frame in frames:
            out.append(AudioOut(
                session=session, turn=reply.turn, seq=reply.seq, sample_rate_hz=rate, pcm=frame.pcm,
                text_start=reply.spoken_end, text_end=max(frame.text_end, reply.spoken_end),
                emitted_ns=time.time_ns(),
            ))
            reply.seq += 1
            reply.spoken_end = max(frame.text_end, reply.spoken_end)
        return out

    def _sample_rate_hz(self) -> int:
        return self._engine.sample_rate_hz if self._engine is not None else SAMPLE_RATE_HZ


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
