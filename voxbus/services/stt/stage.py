"""The STT stage: a session's ``AudioIn`` frames in; speech events and transcripts out.

Each frame is handled in its session's lane, in order:

    PCM16 -> 16 kHz mono (PcmConverter) -> Silero VAD + turn detector (Segmenter)

on one "frontend" thread, so the event loop only routes messages. The turn events become:

- ``SpeechStarted``: ``UserStartedSpeaking`` yielded at once. Decodes never run in the lane, so
  it never waits behind one (barge-in depends on it).
- ``PartialDue``: a partial decode as a background task, only if no decode (final or partial)
  runs in the worker at that moment: partials are skipped, never queued.
- ``SilenceBegan``: the final decode starts speculatively (background task); once decoded, if
  the user is still silent, its words go out as a speculative ``EndOfTurn`` (number k of the
  turn) so the LLM and TTS prepare the reply while the silence window runs ...
- ``SpeechResumed``: ... and it is discarded if the user goes on speaking (``TurnResumed``
  voids guess k, if it went out).
- ``EndOfTurn`` (``end_silence_ms`` of silence): ``UserStoppedSpeaking`` yielded at once; a
  background task awaits the speculative decode (usually done by then) and publishes the final
  ``Transcript`` and ``EndOfTurn``, which names the guess it commits (``speculation`` k) when the
  final is that guess's decode. A session has at most one final outstanding: the next one
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

Sessions: the runtime opens an ``SttSession`` (``session.py``: the per-session state and the turn
events above) for a session's first frame once the worker has a place (``max_sessions``; a
further session's frames wait with JetStream, never in front of other sessions), and closes it
after ``session_idle_s`` without frames; a final still decoding finishes first. Late messages (the
partials and finals decoded in the background) go out through the session's scope.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import structlog

from voxbus.audio import Float32Array
from voxbus.contracts.subjects import Kind
from voxbus.runtime.scope import SessionScope
from voxbus.runtime.stage import SessionPolicy
from voxbus.runtime.tasks import cancel_and_wait
from voxbus.services.stt import turns
from voxbus.services.stt.decoding import Decoder, build_engine
from voxbus.services.stt.denoise import make_denoiser
from voxbus.services.stt.engine import Transcriber
from voxbus.services.stt.session import SttSession
from voxbus.services.stt.settings import SttSettings
from voxbus.services.stt.shared import SttStats
from voxbus.services.stt.turn_state import read_state
from voxbus.services.stt.vad import SileroVad, VoiceActivity

if TYPE_CHECKING:
    from voxbus.services.stt.smart_turn import SmartTurn

#: Between two segmenters made ahead of time (``_fill_spares``): frames go first.
SPARE_PAUSE_S = 0.05
#: Segmenters made ahead of time where the worker holds any number of sessions.
SPARES_UNLIMITED = 8

log = structlog.get_logger("voxbus.stt")


class SttStage:
    """Speech to text for many sessions per worker. See the module docstring."""

    name = "stt"
    #: ``ctl.session``: a caller who hung up (``SessionEnded``) frees the session's place now.
    inputs: tuple[Kind, ...] = (Kind.AUDIO_IN, Kind.SESSION)
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
        self.settings = s = settings or SttSettings()
        self.policy = SessionPolicy(max_sessions=s.max_sessions, idle_close_s=s.session_idle_s,
                                    admit_timeout_s=s.admit_timeout_s,
                                    evict_idle_s=s.evict_idle_s,
                                    evict_unheard_s=s.evict_unheard_s)
        self.stats = SttStats()
        self._engine = engine
        self._partial_engine = partial_engine
        self._vad_factory = vad_factory
        self._turn_config = s.turn_config()
        self.final: Decoder | None = None
        self.partial: Decoder | None = None  # None: partials share the final decoder
        self._partial_loading: asyncio.Task[None] | None = None
        self.frontend: ThreadPoolExecutor | None = None
        self._spare: list[turns.Segmenter] = []
        self._filling: asyncio.Task[None] | None = None
        self.smart_turn: SmartTurn | None = None

    @property
    def engine(self) -> Transcriber:
        """The engine of the finals."""
        if self.final is None:
            raise RuntimeError("SttStage is not started")
        return self.final.engine

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        load_s = warmup_s = 0.0
        self.final = final = Decoder(name="stt-final")
        if self._engine is not None:
            final.use(self._engine)
        else:
            load_s = await final.load(functools.partial(build_engine, s))
            warmup_s = await final.warmup()
        if s.partials and s.partial_nice > 0 and (
            self._partial_engine is not None or self._engine is None
        ):
            if self._partial_engine is not None:
                self.partial = Decoder(name="stt-partial", nice=s.partial_nice)
                self.partial.use(self._partial_engine)
            else:  # its own copy, at its own nice, loaded after the worker is up: till then
                # partials share the final's decoder when it is free (``partial_decoder``)
                self._partial_loading = asyncio.create_task(self._load_partial(),
                                                            name="stt-partial-load")
        self.frontend = ThreadPoolExecutor(1, thread_name_prefix="stt-frontend")
        loop = asyncio.get_running_loop()
        if s.turn_model == "smart-turn":  # asked on the frontend thread, where turns are found
            from voxbus.services.stt.smart_turn import SmartTurn

            self.smart_turn = await loop.run_in_executor(self.frontend, SmartTurn)
        self._spare.append(await loop.run_in_executor(self.frontend, self._segmenter))
        self._filling = asyncio.create_task(self._fill_spares(), name="stt-spares")
        log.info("stt_started", model=s.model, device=s.device, cpu_threads=s.cpu_threads,
                 compute_type=s.compute_type or "default", load_s=round(load_s, 3),
                 warmup_s=round(warmup_s, 3),
                 partials="off" if not s.partials
                 else "background" if (self.partial or self._partial_loading) else "shared",
                 max_sessions=s.max_sessions, turn_model=s.turn_model, denoise=s.denoise)

    async def _load_partial(self) -> None:
        dec = Decoder(name="stt-partial", nice=self.settings.partial_nice)
        try:
            load_s = await dec.load(functools.partial(build_engine, self.settings, partial=True))
            warmup_s = await dec.warmup()
        except Exception as e:  # noqa: BLE001 - partials go on sharing the final's decoder
            log.error("stt_partial_decoder_failed", error=repr(e))
            await dec.close()
            return
        except asyncio.CancelledError:  # stopped while it loaded
            await dec.close()
            raise
        self.partial = dec
        log.info("stt_partial_decoder_ready", load_s=round(load_s, 3),
                 warmup_s=round(warmup_s, 3))

    async def _fill_spares(self) -> None:
        """Make a segmenter for every place ahead of time, one at a time between the frames (a
        new one takes ~45 ms, its VAD's model loaded): a burst of new sessions (a flood of
        one-frame ones) then costs no caller a wait behind their making."""
        assert self.frontend is not None
        loop = asyncio.get_running_loop()
        began, made = time.monotonic(), 0
        while len(self._spare) + (self.stats.sessions_opened - self.stats.sessions_closed
                                  ) < self._places():
            self._spare.append(await loop.run_in_executor(self.frontend, self._new_segmenter))
            made += 1
            await asyncio.sleep(SPARE_PAUSE_S)
        # until then, a burst of new sessions waits behind the making of their segmenters
        log.info("stt_places_ready", places=self._places(), made=made,
                 ms=round(1000 * (time.monotonic() - began)))

    async def places_ready(self) -> None:
        """Wait until a segmenter is ready for every place (made in the background from
        ``start``, a few seconds)."""
        if self._filling is not None:
            await asyncio.shield(self._filling)

    def _places(self) -> int:
        return self.settings.max_sessions or SPARES_UNLIMITED

    async def stop(self) -> None:
        await cancel_and_wait(self._filling)
        await cancel_and_wait(self._partial_loading)
        for dec in (self.final, self.partial):
            if dec is not None:
                await dec.close()
        if self.frontend is not None:
            # the spares' native VAD sessions end on the thread that made them, now, not in a
            # garbage collection on whatever thread (the event loop's included) runs it later
            await asyncio.get_running_loop().run_in_executor(self.frontend, self._spare.clear)
            await asyncio.to_thread(self.frontend.shutdown, wait=True)
        log.info("stt_stopped", finals=self.stats.finals)

    # ---- sessions -------------------------------------------------------------------------------

    async def open(self, scope: SessionScope) -> SttSession:
        assert self.frontend is not None, "SttStage.start() was not called"
        last_turn = (await read_state(scope.bus, scope.region, scope.session)).turn
        seg = await asyncio.get_running_loop().run_in_executor(self.frontend, self._segmenter)
        self.stats.sessions_opened += 1
        scope.log.info("session_opened", last_turn=last_turn)
        return SttSession(self, scope, seg, last_turn)

    def closed(self, segmenter: turns.Segmenter) -> None:
        """A session is done with its segmenter: keep it for the next one (as many as there
        are places)."""
        if len(self._spare) < self._places():
            self._spare.append(segmenter)
        self.stats.sessions_closed += 1

    def _segmenter(self) -> turns.Segmenter:
        """A reset segmenter from the spares, or a new one (runs on the frontend thread)."""
        if self._spare:
            seg = self._spare.pop()
            seg.reset()
            return seg
        return self._new_segmenter()

    def _new_segmenter(self) -> turns.Segmenter:
        return turns.Segmenter(vad=self._vad_factory(), config=self._turn_config,
                               turn_model=self._complete if self.smart_turn else None,
                               denoiser=make_denoiser(self.settings.denoise),
                               denoised_decode=self.settings.denoise_decode,
                               foreground_db=self.settings.foreground_db)

    def _complete(self, audio: Float32Array) -> bool:
        assert self.smart_turn is not None
        p = self.smart_turn.complete_probability(audio)
        self.stats.turns_judged += 1
        complete = p >= self.settings.turn_model_threshold
        self.stats.turns_judged_complete += complete
        return complete

    def partial_decoder(self) -> Decoder | None:
        """Where a partial may decode right now; None while any decode runs (never queued)."""
        final = self.final
        if final is None or final.busy:
            return None
        dec = self.partial or final
        return None if dec.busy else dec
