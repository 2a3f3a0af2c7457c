"""The STT stage: a session's ``AudioIn`` frames in; speech events and transcripts out.

Each frame is handled in its session's lane, in order:

    PCM16 -> 16 kHz mono (PcmConverter) -> Silero VAD + turn detector (Segmenter)

on one "frontend" thread, so the event loop only routes messages. The turn events become:

- ``SpeechStarted``: ``UserStartedSpeaking`` yielded at once. Decodes never run in the lane, so
  it never waits behind one (barge-in depends on it).
- ``PartialDue``: a partial decode as a background task, only if no decode (final or partial)
  runs in the worker at that moment: partials are skipped, never queued.
- ``SilenceBegan``: the final decode starts speculatively (background task) ...
- ``SpeechResumed``: ... and is discarded if the user goes on speaking.
- ``EndOfTurn`` (``end_silence_ms`` of silence): ``UserStoppedSpeaking`` yielded at once; a
  background task awaits the speculative decode (usually done by then) and publishes the final
  ``Transcript`` and ``EndOfTurn``. A session has at most one final outstanding: the next one
  waits for it in the lane (backpressure), which also keeps finals in turn order. A user who
  speaks again at once may get ``UserStartedSpeaking(n+1)`` before ``EndOfTurn(n)``.

Finals decode on one engine thread of the worker (one at a time, FIFO: the engine
serves one call at a time with ``cpu_threads`` cores). Partials decode on a second engine whose
thread and CTranslate2 threads run at low priority (``partial_nice``, default 19): when speech ends
during a partial, the speculative final starts at once and takes the CPU from it, so a partial
never delays a final (measured: a final's decode time is unchanged with a partial running beside
it at nice 19, and 1.5x longer at nice 0). With ``partial_nice`` 0 partials share the finals'
engine and its thread.

Empty finals (noise, or a decode Whisper marks as no speech) are still published, as a final
``Transcript`` and an ``EndOfTurn`` with an empty transcript, so every ``UserStartedSpeaking(n)`` is
closed by ``UserStoppedSpeaking(n)`` and ``EndOfTurn(n)``; the LLM stage ignores empty transcripts.

Times: ``UserStartedSpeaking.at_ns``/``speech_start_ns`` is the speech onset,
``UserStoppedSpeaking.at_ns``/``speech_end_ns`` the end of speech and ``EndOfTurn.at_ns`` the end of
the silence window, all on the audio timeline (``AudioIn.capture_ns`` plus sample offsets);
``Transcript.emitted_ns`` is the wall clock at publication.

Turn numbers: the session's last turn is kept in the state bucket (key ``<session>.stt``); it is
read when the session's state is created here and read and written at every speech start, so a
worker that takes a session over never reuses a turn number.

Capacity: at most ``max_sessions`` sessions hold state in a worker; a frame of one more session
waits in its lane for a free place (and the lane's bounded queue pushes back on the consumer).
A session's state is dropped after ``session_idle_s`` without frames.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError

from voxbus.audio import Float32Array, PcmError
from voxbus.contracts import control
from voxbus.contracts.messages import (
    MAX_TEXT_CHARS,
    AnyMessage,
    AudioIn,
    EndOfTurn,
    Message,
    Transcript,
    UserStartedSpeaking,
    UserStoppedSpeaking,
)
from voxbus.contracts.streams import state_bucket
from voxbus.contracts.subjects import Kind
from voxbus.runtime.bus import Bus
from voxbus.runtime.stage import BadInput, Context, Retryable
from voxbus.runtime.tasks import TaskSet
from voxbus.services.stt import turns
from voxbus.services.stt.decoding import Decoder, build_engine
from voxbus.services.stt.engine import Transcriber, TranscriptResult
from voxbus.services.stt.frontend import AudioFrontend
from voxbus.services.stt.settings import SttSettings
from voxbus.services.stt.vad import SileroVad, VoiceActivity

log = structlog.get_logger("voxbus.stt")



def state_key(session: str) -> str:
    """The session's key in the region's state bucket (``<session>.stt``)."""
    return control.state_key(session, control.STT_STATE)


# ---- per-session state --------------------------------------------------------------------------


@dataclass(eq=False)
class _Speculative:
    span: tuple[int, int]  # [audio_start_sample, audio_end_sample) it decodes
    task: asyncio.Task[Any]


@dataclass(eq=False, kw_only=True)
class _Session:
    region: str
    session: str
    bus: Bus
    frontend: AudioFrontend
    log: structlog.typing.FilteringBoundLogger
    turn: int  # the current (or last) turn
    fmt: tuple[int, int] | None = None  # (sample_rate_hz, channels) of the last frame
    closed_turn: int = 0  # the last turn whose EndOfTurn was detected
    partials_sent: int = 0  # partials published for `turn`; the final's seq follows them
    last_partial: str = ""
    spec: _Speculative | None = None
    final: asyncio.Task[Any] | None = None
    tasks: TaskSet = field(default_factory=lambda: TaskSet("stt-session"))
    publish_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_seen: float = field(default_factory=time.monotonic)
    active: int = 0  # frames being handled right now


@dataclass
class SttStats:
    """Counters for benchmarks and tests."""

    sessions_admitted: int = 0
    sessions_waited: int = 0
    sessions_evicted: int = 0
    partials_published: int = 0
    partials_skipped: int = 0
    speculative_started: int = 0
    speculative_discarded: int = 0
    finals: int = 0
    decode_ms: list[float] = field(default_factory=list)
    audio_ms: list[float] = field(default_factory=list)


# ---- the stage ----------------------------------------------------------------------------------


class SttStage:
    """Speech to text for many sessions per worker. See the module docstring."""

    name = "stt"
    inputs: tuple[Kind, ...] = (Kind.AUDIO_IN,)
    urgent: tuple[Kind, ...] = ()

    def __init__(
        self,
        settings: SttSettings | None = None,
        *,
        engine: Transcriber | None = None,
        partial_engine: Transcriber | None = None,
        vad_factory: Callable[[], VoiceActivity] = SileroVad,
    ) -> None:
        """By default ``start()`` loads ``settings.model`` twice and warms both up: the engine
        for finals, and one for partials built on a low-priority thread
        (``settings.partial_nice``). Tests pass engines already loaded and warmed up:
        ``engine`` for finals and ``partial_engine`` for partials (build it in a thread that
        called ``lower_thread_priority``); with ``engine`` and no ``partial_engine``, or with
        ``partial_nice`` 0, partials share the final engine and are skipped while it decodes."""
        self.settings = settings or SttSettings()
        self.stats = SttStats()
        self._engine = engine
        self._partial_engine = partial_engine
        self._vad_factory = vad_factory
        self._turn_config = self.settings.turn_config()
        self._final: Decoder | None = None
        self._partial: Decoder | None = None  # None: partials share the final decoder
        self._frontend: ThreadPoolExecutor | None = None
        self._admit: asyncio.Semaphore | None = None
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._spare: list[turns.Segmenter] = []
        self._tasks = TaskSet("stt")

    @property
    def engine(self) -> Transcriber:
        """The engine of the finals."""
        if self._final is None:
            raise RuntimeError("SttStage is not started")
        return self._final.engine

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        load_s = warmup_s = 0.0
        self._final = final = Decoder(name="stt-final")
        if self._engine is not None:
            final.use(self._engine)
        else:
            load_s = await final.load(functools.partial(build_engine, s))
            warmup_s = await final.warmup()
        if s.partials and s.partial_nice > 0 and (
            self._partial_engine is not None or self._engine is None
        ):
            self._partial = Decoder(name="stt-partial", nice=s.partial_nice)
            if self._partial_engine is not None:
                self._partial.use(self._partial_engine)
            else:
                load_s += await self._partial.load(functools.partial(build_engine, s))
                warmup_s += await self._partial.warmup()
        self._frontend = ThreadPoolExecutor(1, thread_name_prefix="stt-frontend")
        self._admit = asyncio.Semaphore(s.max_sessions)
        loop = asyncio.get_running_loop()
        self._spare.append(await loop.run_in_executor(self._frontend, self._segmenter))
        self._tasks.spawn(self._janitor(), name="stt-janitor")
        log.info("stt_started", model=s.model, device=s.device, cpu_threads=s.cpu_threads,
                 load_s=round(load_s, 3), warmup_s=round(warmup_s, 3),
                 partials="off" if not s.partials else "background" if self._partial else "shared",
                 max_sessions=s.max_sessions)

    async def stop(self) -> None:
        """Let finals still decoding publish (up to ``drain_timeout_s``), then drop everything."""
        await self._tasks.close()
        finals = [st.final for st in self._sessions.values() if st.final and not st.final.done()]
        if finals:
            await asyncio.wait(finals, timeout=self.settings.drain_timeout_s)
        for st in list(self._sessions.values()):
            await st.tasks.close()
        self._sessions.clear()
        for dec in (self._final, self._partial):
            if dec is not None:
                await dec.close()
        if self._frontend is not None:
            await asyncio.to_thread(self._frontend.shutdown, wait=True)
        log.info("stt_stopped", finals=self.stats.finals)

    # ---- sessions -------------------------------------------------------------------------------

    def _segmenter(self) -> turns.Segmenter:
        """A reset segmenter from the spares, or a new one (runs on the frontend thread)."""
        if self._spare:
            seg = self._spare.pop()
            seg.reset()
            return seg
        return turns.Segmenter(vad=self._vad_factory(), config=self._turn_config)

    async def _session_for(self, msg: AudioIn, ctx: Context) -> _Session:
        key = (ctx.region, msg.session)
        st = self._sessions.get(key)
        if st is not None:
            return st
        assert self._admit is not None and self._frontend is not None
        if self._admit.locked():
            self.stats.sessions_waited += 1
            log.info("session_waiting", session=msg.session, sessions=len(self._sessions))
        await self._admit.acquire()
        try:
            last_turn = await self._read_turn(ctx.bus, ctx.region, msg.session)
            seg = await asyncio.get_running_loop().run_in_executor(
                self._frontend, self._segmenter
            )
        except BaseException:
            self._admit.release()
            raise
        st = _Session(
            region=ctx.region, session=msg.session, bus=ctx.bus, frontend=AudioFrontend(seg),
            log=log.bind(stage=self.name, region=ctx.region, session=msg.session), turn=last_turn,
        )
        self._sessions[key] = st
        self.stats.sessions_admitted += 1
        st.log.info("session_admitted", last_turn=last_turn, sessions=len(self._sessions))
        return st

    async def _read_turn(self, bus: Bus, region: str, session: str) -> int:
        """The session's last turn number in the state bucket (0 if none). Raises Retryable."""
        try:
            kv = await bus.kv(state_bucket(region))
            entry = await kv.get(state_key(session))
        except KeyNotFoundError:
            return 0
        except (NatsError, TimeoutError) as e:
            raise Retryable(f"state bucket unavailable: {e}") from e
        try:
            return control.decode_stt_state(entry.value or b"").turn
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("bad_turn_state", session=session)
            return 0

    async def _next_turn(self, st: _Session) -> int:
        """Advance the turn past this worker's and the bucket's last one, and store it."""
        try:
            stored = await self._read_turn(st.bus, st.region, st.session)
        except Retryable as e:
            st.log.warning("turn_state_unavailable", error=str(e))
            stored = 0
        turn = max(st.turn, stored) + 1
        try:
            kv = await st.bus.kv(state_bucket(st.region))
            await kv.put(state_key(st.session),
                         control.encode_json(control.SttTurnState(turn=turn)))
        except (NatsError, TimeoutError) as e:
            st.log.warning("turn_state_not_saved", turn=turn, error=str(e))
        return turn

    async def _janitor(self) -> None:
        every = min(5.0, self.settings.session_idle_s / 4)
        while True:
            await asyncio.sleep(every)
            await self.evict_idle()

    async def evict_idle(self) -> int:
        """Drop the state of sessions idle for ``session_idle_s`` (no frame, no final pending)."""
        assert self._admit is not None
        cutoff = time.monotonic() - self.settings.session_idle_s
        evicted = 0
        for key, st in list(self._sessions.items()):
            if st.active or st.last_seen > cutoff or (st.final is not None and not st.final.done()):
                continue
            del self._sessions[key]
            await st.tasks.close()
            self._spare.append(st.frontend.segmenter)
            self._admit.release()
            evicted += 1
            self.stats.sessions_evicted += 1
            st.log.info("session_evicted", turn=st.turn, sessions=len(self._sessions))
        return evicted

    # ---- frames ---------------------------------------------------------------------------------

    async def handle(self, msg: AnyMessage, ctx: Context) -> AsyncIterator[Message]:
        if not isinstance(msg, AudioIn):
            raise BadInput("unexpected_message", f"stt takes audio.in, not {type(msg).__name__}")
        st = await self._session_for(msg, ctx)
        st.active += 1
        try:
            try:
                segments = await asyncio.get_running_loop().run_in_executor(
                    self._frontend, st.frontend.push, msg
                )
            except PcmError as e:
                raise BadInput("bad_pcm", str(e)) from None
            fmt = (msg.sample_rate_hz, msg.channels)
            if fmt != st.fmt:
                if st.fmt is not None:
                    st.log.info("audio_format_changed", sample_rate_hz=fmt[0], channels=fmt[1])
                st.fmt = fmt
            for seg in segments:
                async for out in self._on_segment(st, seg):
                    yield out
        finally:
            st.active -= 1
            st.last_seen = time.monotonic()

    async def _on_segment(self, st: _Session, seg: turns.Segment) -> AsyncIterator[Message]:
        ns_at = st.frontend.timeline.ns_at
        match seg.event:
            case turns.SpeechStarted() as ev:
                st.turn = await self._next_turn(st)
                st.partials_sent, st.last_partial = 0, ""
                at_ns = ns_at(ev.speech_start_sample)
                st.log.info("speech_started", turn=st.turn)
                yield UserStartedSpeaking(session=st.session, turn=st.turn, at_ns=at_ns)
            case turns.PartialDue() as ev:
                assert seg.audio is not None
                if self.settings.partials and st.spec is None and self._partial_decoder():
                    st.tasks.spawn(
                        self._run_partial(st, st.turn, seg.audio, ns_at(ev.speech_start_sample),
                                      ns_at(ev.at_sample)),
                        name=f"stt-partial-{st.session}",
                    )
                else:
                    self.stats.partials_skipped += 1
            case turns.SilenceBegan() as ev:
                assert seg.audio is not None
                if self.settings.speculative_final:
                    self._drop_speculative(st)
                    assert self._final is not None
                    task = st.tasks.spawn(
                        self._final.run(seg.audio, partial=False),
                        name=f"stt-speculative-{st.session}",
                    )
                    st.spec = _Speculative((ev.audio_start_sample, ev.audio_end_sample), task)
                    self.stats.speculative_started += 1
            case turns.SpeechResumed():
                if self._drop_speculative(st):
                    st.log.debug("speculative_discarded", turn=st.turn)
            case turns.EndOfTurn() as ev:
                assert seg.audio is not None
                async for out in self._end_of_turn(st, ev, seg.audio):
                    yield out

    def _drop_speculative(self, st: _Session) -> bool:
        spec, st.spec = st.spec, None
        if spec is None:
            return False
        spec.task.cancel()  # its thread finishes the decode; the result is ignored
        self.stats.speculative_discarded += 1
        return True

    async def _end_of_turn(
        self, st: _Session, ev: turns.EndOfTurn, audio: Float32Array
    ) -> AsyncIterator[Message]:
        assert self._final is not None
        ns_at = st.frontend.timeline.ns_at
        turn = st.turn
        start_ns, end_ns = ns_at(ev.speech_start_sample), ns_at(ev.speech_end_sample)
        st.closed_turn = turn
        yield UserStoppedSpeaking(session=st.session, turn=turn, at_ns=end_ns)
        spec, st.spec = st.spec, None
        if spec is not None and spec.span == (ev.audio_start_sample, ev.audio_end_sample):
            decode = spec.task
        else:
            if spec is not None:
                spec.task.cancel()
                self.stats.speculative_discarded += 1
            decode = st.tasks.spawn(self._final.run(audio, partial=False),
                                    name=f"stt-final-{st.session}")
        if st.final is not None and not st.final.done():
            await asyncio.wait({st.final})  # one final outstanding per session, in turn order
        st.final = st.tasks.spawn(
            self._publish_final(
                st, turn=turn, seq=st.partials_sent, decode=decode, start_ns=start_ns,
                end_ns=end_ns, at_ns=ns_at(ev.at_sample), audio_ms=audio.size / 16.0,
                forced=ev.forced,
            ),
            name=f"stt-publish-final-{st.session}",
        )

    # ---- transcripts ----------------------------------------------------------------------------

    def _partial_decoder(self) -> Decoder | None:
        """Where a partial may decode right now; None while any decode runs (never queued)."""
        final = self._final
        if final is None or final.busy:
            return None
        dec = self._partial or final
        return None if dec.busy else dec

    def _text(self, result: TranscriptResult) -> str:
        nsp, logprob = result.no_speech_prob, result.avg_logprob
        if nsp is not None and nsp > self.settings.no_speech_threshold and (
            logprob is None or logprob < -1.0
        ):
            return ""
        return result.text.strip()[:MAX_TEXT_CHARS]

    async def _run_partial(
        self, st: _Session, turn: int, audio: Float32Array, start_ns: int, end_ns: int
    ) -> None:
        dec = self._partial_decoder()
        if dec is None:  # busy since the event: skip, never queue
            self.stats.partials_skipped += 1
            return
        result = await dec.submit(audio, partial=True)
        text = self._text(result)
        async with st.publish_lock:
            if st.closed_turn >= turn or st.turn != turn or not text or text == st.last_partial:
                return
            seq, st.partials_sent, st.last_partial = st.partials_sent, st.partials_sent + 1, text
            await st.bus.publish(st.region, Transcript(
                session=st.session, turn=turn, seq=seq, text=text, is_final=False,
                speech_start_ns=start_ns, speech_end_ns=end_ns,
                decode_ms=round(result.decode_s * 1000, 3), emitted_ns=time.time_ns(),
            ))
        self.stats.partials_published += 1
        st.log.debug("partial_transcript", turn=turn, seq=seq,
                     decode_ms=round(result.decode_s * 1000, 1), pii={"text": text})

    async def _publish_final(
        self, st: _Session, *, turn: int, seq: int, decode: asyncio.Task[Any], start_ns: int,
        end_ns: int, at_ns: int, audio_ms: float, forced: bool,
    ) -> None:
        try:
            result: TranscriptResult = await decode
        except asyncio.CancelledError:
            raise
        except Exception as e:
            st.log.exception("final_decode_failed", turn=turn)
            await st.bus.publish_error(
                st.region, st.session, turn=turn, code="decode_failed",
                message=f"{type(e).__name__}: {e}", stage=self.name,
            )
            return
        text = self._text(result)
        decode_ms = round(result.decode_s * 1000, 3)
        async with st.publish_lock:
            await st.bus.publish(st.region, Transcript(
                session=st.session, turn=turn, seq=seq, text=text, is_final=True,
                speech_start_ns=start_ns, speech_end_ns=end_ns, decode_ms=decode_ms,
                emitted_ns=time.time_ns(),
            ))
            await st.bus.publish(st.region, EndOfTurn(
                session=st.session, turn=turn, transcript=text, speech_start_ns=start_ns,
                speech_end_ns=end_ns, decode_ms=decode_ms, at_ns=at_ns,
            ))
        self.stats.finals += 1
        self.stats.decode_ms.append(decode_ms)
        self.stats.audio_ms.append(audio_ms)
        st.log.info("final_transcript", turn=turn, decode_ms=decode_ms,
                    audio_ms=round(audio_ms, 1), forced=forced, empty=not text,
                    pii={"text": text})
