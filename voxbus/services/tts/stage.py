"""The TTS stage: reply text in, 20 ms PCM16 frames at 24 kHz out, unit by unit as text arrives.

Per session (a ``TtsSession``, opened by the runtime when a reply starts and released when it ends,
so ``max_sessions`` bounds the replies spoken at once), one reply (turn) is kept: its text (at the
``ReplyText`` offsets) and a ``UnitSplitter``. Each chunk's complete units go to the worker-wide
``SynthScheduler`` at once (so the next unit is synthesized while this one's frames are published),
and each unit's frames are yielded as soon as it is synthesized: the bridge paces playback.
``ReplyEnd`` flushes the rest and ends with an empty ``AudioOut(last=True)`` whose ``text_end`` is
the reply's length.

A reply is named by its turn and its ``speculation`` (a reply prepared for a speculative turn:
see ``EndOfTurn``); its frames carry the same, so the bridge holds them until the turn is
committed. A reply that ``runtime.ledger.ReplyKey.rank`` puts after the current one replaces it
(a guess voided by the commit); one before it is stale.

Frames carry contiguous ``seq`` from 0 per reply and text spans that tile the reply: a frame
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
from collections.abc import Sequence

import structlog

from voxbus.contracts.messages import AnyMessage, AudioOut, Message, ReplyEnd
from voxbus.contracts.subjects import Kind
from voxbus.runtime.scope import SessionScope
from voxbus.runtime.stage import SessionPolicy

from .engine import SAMPLE_RATE_HZ, KokoroEngine, Synthesizer, voice_or_default
from .scheduler import SchedulerStats, SynthScheduler
from .session import TtsSession
from .settings import TtsSettings

log = structlog.get_logger("voxbus.tts")

#: words in a first unit without punctuation, for an engine that names no number of its own
DEFAULT_FIRST_WORDS = 5


class TtsStage:
    name = "tts"
    inputs: tuple[Kind, ...] = (Kind.REPLY,)
    urgent: tuple[Kind, ...] = (Kind.INTERRUPT,)

    def __init__(self, settings: TtsSettings, *, engine: Synthesizer | None = None) -> None:
        """``engine``: an already loaded engine (tests, benchmarks); else ``settings.engine``."""
        self.settings = settings
        self.policy = SessionPolicy(max_sessions=settings.max_sessions,
                                    admit_timeout_s=settings.admit_timeout_s,
                                    idle_close_s=settings.reply_ttl_s,
                                    evict_idle_s=settings.evict_idle_s)
        self._engine = engine
        self._scheduler: SynthScheduler | None = None
        self.voice = settings.voice

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the model (unless given) and warm it up, off the event loop."""
        started = time.monotonic()
        if self._engine is None:
            self._engine = await asyncio.to_thread(self._load)
        engine = self._engine
        self.voice = (self.check_voice(self.settings.voice, log) if self.settings.voice
                      else engine.default_voice)
        await asyncio.to_thread(engine.warmup)
        self._scheduler = SynthScheduler(
            engine,
            workers=self.settings.synth_workers,
            cache_entries=self.settings.cache_entries,
            cache_max_chars=self.settings.cache_max_chars,
        )
        self._scheduler.start()
        log.info("tts_ready", voice=self.voice, ready_ms=round((time.monotonic() - started) * 1e3),
                 synth_workers=self.settings.synth_workers,
                 intra_op_threads=self.settings.threads)

    async def stop(self) -> None:
        if self._scheduler is not None:
            await self._scheduler.close()
            self._scheduler = None

    def _load(self) -> Synthesizer:
        s = self.settings
        if s.engine == "piper":
            from .piper import PiperEngine

            return PiperEngine(speed=s.speed, intra_op_threads=s.threads,
                               providers=s.providers, spin=s.spin)
        return KokoroEngine(
            model_path=s.model_path,
            speed=s.speed,
            intra_op_threads=s.threads,
            providers=s.providers,
            spin=s.spin,
        )

    @property
    def engine(self) -> Synthesizer:
        if self._engine is None:
            raise RuntimeError("TtsStage.start() was not called")
        return self._engine

    @property
    def first_words(self) -> int:
        """Words in a first unit without punctuation: ``TTS_FIRST_WORDS``, else the engine's
        (Piper 3; 5 for Kokoro, which said four-word first units less clearly)."""
        default = getattr(self._engine, "first_unit_words", DEFAULT_FIRST_WORDS)
        return self.settings.first_words or int(default)

    @property
    def stats(self) -> SchedulerStats:
        return self.scheduler.stats

    @property
    def scheduler(self) -> SynthScheduler:
        if self._scheduler is None:
            raise RuntimeError("TtsStage.start() was not called")
        return self._scheduler

    @property
    def sample_rate_hz(self) -> int:
        return self._engine.sample_rate_hz if self._engine is not None else SAMPLE_RATE_HZ

    def check_voice(self, voice: str, logger: structlog.typing.FilteringBoundLogger) -> str:
        chosen = voice_or_default(self.engine, voice)
        if chosen != voice:
            logger.warning("unknown_voice", voice=voice, fallback=chosen,
                           available=list(self.engine.voices))
        return chosen

    # -- sessions -------------------------------------------------------------------------------

    async def open(self, scope: SessionScope) -> TtsSession:
        return TtsSession(self, scope)

    def end_marker(self, session: str, turn: int, seq: int, text_start: int,
                   text_end: int, *, speculation: int = 0) -> AudioOut:
        """The empty last frame that ends a reply: the listener closes it there."""
        return AudioOut(session=session, turn=turn, seq=seq, sample_rate_hz=self.sample_rate_hz,
                        pcm=b"", text_start=text_start, text_end=text_end, last=True,
                        emitted_ns=time.time_ns(), speculation=speculation)

    def refused(self, msg: AnyMessage) -> Sequence[Message]:
        """A reply refused for want of a place still ends, so the bridge closes it."""
        if not isinstance(msg, ReplyEnd):
            return ()
        return [self.end_marker(msg.session, msg.turn, 0, 0, len(msg.text),
                                speculation=msg.speculation)]
