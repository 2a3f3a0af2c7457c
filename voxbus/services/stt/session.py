"""One session's speech recognition inside a worker: its audio path and the turn events (see the
stage's docstring). Opened and closed by the runtime; background decodes publish through the
session's scope."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog
from nats.errors import Error as NatsError

from voxbus.audio import Float32Array, PcmError
from voxbus.contracts import control
from voxbus.contracts.messages import (
    MAX_TEXT_CHARS,
    AnyMessage,
    AudioIn,
    EndOfTurn,
    Message,
    SessionEnded,
    SessionStarted,
    Transcript,
    TurnResumed,
    UserStartedSpeaking,
    UserStoppedSpeaking,
)
from voxbus.runtime import metrics
from voxbus.runtime.closing import CloseReason
from voxbus.runtime.ledger import TurnLedger, number_turn
from voxbus.runtime.scope import SessionScope
from voxbus.runtime.stage import BadInput, Context, Retryable
from voxbus.runtime.transient import transient
from voxbus.services.stt import turns
from voxbus.services.stt.audio import WHISPER_RATE_HZ
from voxbus.services.stt.engine import TranscriptResult
from voxbus.services.stt.frontend import AudioFrontend
from voxbus.services.stt.keys import KEYS_GAP_MS, Keypad
from voxbus.services.stt.shared import SttWorker
from voxbus.services.stt.turn_state import read_state, save_state

log = structlog.get_logger("voxbus.stt")


#: A replayed turn whose speech starts within this many frames of a stored turn's start is that
#: turn (a replica replaying from a cold VAD may place the onset a few frames off).
SAME_START_FRAMES = 25
#: Turn starts remembered in the state bucket.
STARTS_KEPT = 4
#: A final is published through a bus outage this long.
BUS_RETRY_S = 15.0


@dataclass(eq=False)
class _Speculative:
    """A guess's decode: the payload of a live guess in the session's ledger."""

    span: tuple[int, int]  # [audio_start_sample, audio_end_sample) it decodes
    number: int  # its ``EndOfTurn.speculation`` within the turn
    task: asyncio.Task[Any] | None = None
    published: bool = False  # its speculative EndOfTurn went (or is going) out


class SttSession:
    """A session's segmenter, turn numbers, and the decodes it has under way. Its guesses and
    commits are the scope's turn ledger's (``ledger.committed`` is the last turn whose end was
    detected here)."""

    def __init__(
        self, stage: SttWorker, scope: SessionScope, segmenter: turns.Segmenter, last_turn: int
    ) -> None:
        self.stage = stage
        self.scope = scope
        self.ledger: TurnLedger[_Speculative] = scope.ledger
        self.frontend = AudioFrontend(segmenter)
        self.turn = last_turn  # the current (or last) turn
        self.turns_heard = 0  # the highest turn the caller's side has heard of (AudioIn)
        self.fmt: tuple[int, int] | None = None  # (sample_rate_hz, channels) of the last frame
        self.partials_sent = 0  # partials published for `turn`; the final's seq follows them
        self.last_partial = ""
        self.final: asyncio.Task[Any] | None = None
        self.publish_lock = asyncio.Lock()
        # The frames are held unacked (``Context.hold``) until nothing later needs them: their
        # audio is behind the detector's retained window and every final over them is published.
        self.held_ends: deque[int] = deque()  # stream position where each held frame ends
        self.unpublished: dict[int, int] = {}  # turn -> audio start of its final, not published
        self.keypad = Keypad(gap=KEYS_GAP_MS * WHISPER_RATE_HZ // 1000)
        self.heard = False  # speech (or a key) came in this session

    @property
    def busy(self) -> bool:
        """A final is still being decoded or published: not idle."""
        return self.final is not None and not self.final.done()

    @property
    def unheard(self) -> bool:
        """No speech (and no key) yet in this session: nothing here worth a decoder's place
        (``SessionPolicy.evict_unheard_s``), whatever it sent."""
        return not self.heard and not self.busy
    @property
    def spec(self) -> _Speculative | None:
        """The guess of the current turn under way (at most one)."""
        live = self.ledger.live_guesses()
        return live[-1][1] if live else None

    async def close(self, reason: CloseReason) -> None:
        """Let a final still decoding publish (up to ``drain_timeout_s``); keep the segmenter."""
        if self.final is not None and not self.final.done():
            if reason.rule.handed_over:  # another replica owns the session now: it decodes again
                self.final.cancel()
            await asyncio.wait({self.final}, timeout=self.stage.settings.drain_timeout_s)
        for _key, spec in self.ledger.drop_guesses():
            if spec.task is not None:
                spec.task.cancel()
        self.stage.closed(self.frontend.segmenter)
        self.scope.log.info("session_closed", reason=str(reason), turn=self.turn)

    # ---- frames ---------------------------------------------------------------------------------

    async def handle(self, msg: AnyMessage, ctx: Context) -> AsyncIterator[Message]:
        if isinstance(msg, SessionEnded):  # hung up: close once what is queued is handled
            self.scope.release()
            return
        if isinstance(msg, SessionStarted):
            return
        if not isinstance(msg, AudioIn):
            raise BadInput("unexpected_message", f"stt takes audio.in, not {type(msg).__name__}")
        try:
            segments = await asyncio.get_running_loop().run_in_executor(
                self.stage.frontend, self.frontend.push, msg
            )
        except PcmError as e:
            raise BadInput("bad_pcm", str(e)) from None
        ctx.hold()
        self.turns_heard = max(self.turns_heard, msg.turns_heard)
        self.held_ends.append(self.frontend.segmenter.position)
        fmt = (msg.sample_rate_hz, msg.channels)
        if fmt != self.fmt:
            if self.fmt is not None:
                self.scope.log.info("audio_format_changed", sample_rate_hz=fmt[0],
                                    channels=fmt[1])
            self.fmt = fmt
        for seg in segments:
            async for out in self._on_segment(seg):
                yield out
        position = self.frontend.segmenter.position
        self.keypad.press(msg.keys, position)
        self.heard = self.heard or bool(msg.keys)
        if due := self.keypad.due(position, speaking=self.frontend.segmenter.detector.speaking):
            async for out in self._keys_turn(*due):
                yield out
        await self.ack_safe()

    async def ack_safe(self) -> None:
        """Ack the held frames no replay could need any more."""
        boundary = self.frontend.segmenter.detector.retain_from_sample
        if self.keypad.keys:  # a replay must see the keys again
            boundary = min(boundary, self.keypad.first_at - 1)
        if self.unpublished:
            boundary = min(boundary, *self.unpublished.values())
        count = 0
        while self.held_ends and self.held_ends[0] <= boundary:
            self.held_ends.popleft()
            count += 1
        if count:
            await self.scope.ack_held(count)

    async def _on_segment(self, seg: turns.Segment) -> AsyncIterator[Message]:
        stage, ns_at = self.stage, self.frontend.timeline.ns_at
        match seg.event:
            case turns.SpeechStarted() as ev:
                self.turn = await self._next_turn(
                    self.frontend.timeline.seq_at(ev.speech_start_sample))
                self.partials_sent, self.last_partial = 0, ""
                self.heard = True
                self.scope.log.info("speech_started", turn=self.turn)
                yield UserStartedSpeaking(session=self.scope.session, turn=self.turn,
                                          at_ns=ns_at(ev.speech_start_sample))
            case turns.PartialDue() as ev:
                assert seg.audio is not None
                if stage.settings.partials and self.spec is None and stage.partial_decoder():
                    self.scope.spawn(
                        self._run_partial(self.turn, seg.audio, ev),
                        name=f"stt-partial-{self.scope.session}",
                    )
                else:
                    stage.stats.partials_skipped += 1
            case turns.SilenceBegan() as ev:
                assert seg.audio is not None and stage.final is not None
                if stage.settings.speculative_final:
                    if resumed := self._drop_speculative():
                        yield resumed
                    spec = _Speculative((ev.audio_start_sample, ev.audio_end_sample),
                                        self.ledger.next_guess(self.turn))
                    if self.ledger.open(self.turn, spec.number, spec):
                        spec.task = self.scope.spawn(
                            self._speculate(spec, seg.audio, ns_at(ev.speech_start_sample),
                                            ns_at(ev.speech_end_sample), ns_at(ev.at_sample)),
                            name=f"stt-speculative-{self.scope.session}")
                        stage.stats.speculative_started += 1
            case turns.SpeechResumed():
                if resumed := self._drop_speculative():
                    yield resumed
            case turns.EndOfTurn() as ev:
                assert seg.audio is not None
                async for out in self._end_of_turn(ev, seg.audio, talk_behind=seg.talk_behind):
                    yield out

    async def _keys_turn(self, keys: str, at: int) -> AsyncIterator[Message]:
        """A turn of telephone keys (``keys``): numbered like speech, committed at once."""
        at_ns = self.frontend.timeline.ns_at(at)
        if self.final is not None and not self.final.done():
            await asyncio.wait({self.final})  # turns go out in order
        self.turn = await self._next_turn(self.frontend.timeline.seq_at(at))
        self.partials_sent, self.last_partial = 0, ""
        self.ledger.commit(self.turn, 0)
        self.scope.log.info("keys_pressed", turn=self.turn, count=len(keys), pii={"keys": keys})
        yield UserStartedSpeaking(session=self.scope.session, turn=self.turn, at_ns=at_ns)
        yield EndOfTurn(session=self.scope.session, turn=self.turn, transcript="", keys=keys,
                        speech_start_ns=at_ns, speech_end_ns=at_ns, at_ns=at_ns)

    def _drop_speculative(self) -> TurnResumed | None:
        """Void the guess under way (the user went on); what voids the reply others prepared
        for it, if its words went out."""
        live = self.ledger.live_guesses()
        if not live:
            return None
        (turn, number), _ = live[-1]
        spec = self.ledger.void(turn, number)
        if spec is None:
            return None
        if spec.task is not None:
            spec.task.cancel()  # its thread finishes the decode; the result is ignored
        self.stage.stats.speculative_discarded += 1
        self.scope.log.debug("speculative_discarded", turn=self.turn, published=spec.published)
        if not spec.published:
            return None
        return TurnResumed(session=self.scope.session, turn=turn, speculation=spec.number,
                           at_ns=time.time_ns())

    async def _speculate(
        self, spec: _Speculative, audio: Float32Array, start_ns: int, end_ns: int, at_ns: int
    ) -> TranscriptResult:
        """Decode the words so far; while the user stays silent, publish them as a speculative
        ``EndOfTurn`` so the reply can be prepared. Returns the decode (the final, if the turn
        ends on this span)."""
        stage = self.stage
        assert stage.final is not None
        result: TranscriptResult = await stage.final.run(audio, partial=False)
        text = self._text(result)
        turn = self.turn
        if (not stage.settings.speculative_replies or not text
                or self.ledger.live(turn, spec.number) is not spec):
            return result  # voided, replaced or committed meanwhile
        spec.published = True  # decided here, before any await: the commit reads it
        try:
            async with self.publish_lock:
                await self.scope.publish(EndOfTurn(
                    session=self.scope.session, turn=turn, transcript=text,
                    speech_start_ns=start_ns, speech_end_ns=end_ns,
                    decode_ms=round(result.decode_s * 1000, 3), at_ns=at_ns, speculative=True,
                    speculation=spec.number,
                ))
            stage.stats.speculative_published += 1
        except Exception as e:  # noqa: BLE001 - the committed final goes out anyway
            self.scope.log.warning("speculative_turn_not_sent", turn=turn, error=repr(e))
        return result

    async def _end_of_turn(
        self, ev: turns.EndOfTurn, audio: Float32Array, *, talk_behind: bool = False
    ) -> AsyncIterator[Message]:
        """``talk_behind``: the turn was people talking behind the caller: its final is empty
        (not decoded) and a guess made of it is dropped."""
        stage, ns_at = self.stage, self.frontend.timeline.ns_at
        assert stage.final is not None
        turn = self.turn
        start_ns, end_ns = ns_at(ev.speech_start_sample), ns_at(ev.speech_end_sample)
        spec = self.spec
        reuse = (spec is not None and spec.task is not None and not talk_behind
                 and spec.span == (ev.audio_start_sample, ev.audio_end_sample))
        # The commit names the guess whose words went out, if it decoded exactly these words
        speculation = spec.number if reuse and spec is not None and spec.published else 0
        commit = self.ledger.commit(turn, speculation)
        yield UserStoppedSpeaking(session=self.scope.session, turn=turn, at_ns=end_ns)
        if reuse and spec is not None and spec.task is not None:
            decode = spec.task  # its decode is the final's
        else:
            for _key, dropped in commit.dropped:
                if dropped.task is not None:
                    dropped.task.cancel()
                    stage.stats.speculative_discarded += 1
            decode = self.scope.spawn(
                _nothing_said(audio) if talk_behind else stage.final.run(audio, partial=False),
                name=f"stt-final-{self.scope.session}")
            if talk_behind:
                stage.stats.talk_behind += 1
                self.scope.log.info("talk_behind_dropped", turn=turn)
        if self.final is not None and not self.final.done():
            await asyncio.wait({self.final})  # one final outstanding per session, in turn order
        self.unpublished[turn] = ev.audio_start_sample
        self.final = self.scope.spawn(
            self._publish_final(
                turn=turn, seq=self.partials_sent, decode=decode, start_ns=start_ns,
                end_ns=end_ns, at_ns=ns_at(ev.at_sample), audio_ms=audio.size / 16.0,
                forced=ev.forced, speculation=speculation,
            ),
            name=f"stt-publish-final-{self.scope.session}",
        )

    # ---- turn numbers ---------------------------------------------------------------------------

    async def _next_turn(self, frame: int) -> int:
        """The number of the turn whose speech starts at audio frame ``frame``: a stored turn
        that started there (its frames are replayed after a takeover), else one past this
        worker's, the bucket's and the caller's side's last turn, stored."""
        scope = self.scope
        try:
            stored = await read_state(scope.bus, scope.region, scope.session)
        except Retryable as e:
            scope.log.warning("turn_state_unavailable", error=str(e))
            stored = control.SttTurnState(turn=0)
        turn, replayed = number_turn(frame, starts=stored.starts, current=self.turn,
                                     stored=stored.turn, committed=self.ledger.committed,
                                     heard_elsewhere=self.turns_heard,
                                     same_start_frames=SAME_START_FRAMES)
        if replayed:
            scope.log.info("turn_replayed", turn=turn, frame=frame)
            return turn
        if self.turns_heard > max(self.turn, stored.turn):
            scope.log.warning("turn_state_behind", stored_turn=stored.turn,
                              turns_heard=self.turns_heard, turn=turn)
        starts = [*stored.starts, control.TurnStart(turn, frame)][-STARTS_KEPT:]
        try:
            await save_state(scope.bus, scope.region, scope.session,
                             control.SttTurnState(turn=turn, starts=starts))
        except (NatsError, TimeoutError) as e:
            scope.log.warning("turn_state_not_saved", turn=turn, error=str(e))
        return turn

    # ---- transcripts ----------------------------------------------------------------------------

    def _text(self, result: TranscriptResult) -> str:
        return result.speech(self.stage.settings.no_speech_threshold)[:MAX_TEXT_CHARS]

    async def _run_partial(self, turn: int, audio: Float32Array, ev: turns.PartialDue) -> None:
        stats = self.stage.stats
        ns_at = self.frontend.timeline.ns_at
        start_ns, end_ns = ns_at(ev.speech_start_sample), ns_at(ev.at_sample)
        dec = self.stage.partial_decoder()
        if dec is None:  # busy since the event: skip, never queue
            stats.partials_skipped += 1
            return
        result = await dec.submit(audio, partial=True)
        if result.words is not None:  # where the caller's words end, for the turn's end
            self.frontend.segmenter.words_heard(audio_start=ev.audio_start_sample,
                                                decoded_to=ev.at_sample, words=result.words)
        text = self._text(result)
        async with self.publish_lock:
            if (self.ledger.committed >= turn or self.turn != turn or not text
                    or text == self.last_partial):
                return
            seq = self.partials_sent
            self.partials_sent, self.last_partial = seq + 1, text
            published = await self.scope.publish(Transcript(
                session=self.scope.session, turn=turn, seq=seq, text=text, is_final=False,
                speech_start_ns=start_ns, speech_end_ns=end_ns,
                decode_ms=round(result.decode_s * 1000, 3), emitted_ns=time.time_ns(),
            ))
        if published:
            stats.partials_published += 1
        self.scope.log.debug("partial_transcript", turn=turn, seq=seq,
                             decode_ms=round(result.decode_s * 1000, 1), pii={"text": text})

    async def _turn_done(self, turn: int) -> None:
        """The turn's final is out: its frames are needed no more."""
        self.unpublished.pop(turn, None)
        await self.ack_safe()

    async def _publish_retrying(self, msg: Message) -> None:
        """Publish through a bus outage (``bus_retry_s``); the frames stay held meanwhile, so
        if this replica dies waiting, the next one decodes the turn again."""
        deadline = time.monotonic() + BUS_RETRY_S
        while True:
            try:
                await self.scope.publish(msg)
                return
            except Exception as e:
                if not transient(e) or time.monotonic() > deadline:
                    raise
                self.scope.log.warning("publish_retry", kind=type(msg).__name__, error=repr(e))
                await asyncio.sleep(0.25)

    async def _publish_final(
        self, *, turn: int, seq: int, decode: asyncio.Task[Any], start_ns: int,
        end_ns: int, at_ns: int, audio_ms: float, forced: bool, speculation: int = 0,
    ) -> None:
        scope, stats = self.scope, self.stage.stats
        try:
            result: TranscriptResult = await decode
        except asyncio.CancelledError:
            raise
        except Exception as e:
            scope.log.exception("final_decode_failed", turn=turn)
            await scope.publish_error(turn=turn, code="decode_failed",
                                      message=f"{type(e).__name__}: {e}")
            await self._turn_done(turn)
            return
        text = self._text(result)
        decode_ms = round(result.decode_s * 1000, 3)
        async with self.publish_lock:
            await self._publish_retrying(Transcript(
                session=scope.session, turn=turn, seq=seq, text=text, is_final=True,
                speech_start_ns=start_ns, speech_end_ns=end_ns, decode_ms=decode_ms,
                emitted_ns=time.time_ns(),
            ))
            await self._publish_retrying(EndOfTurn(
                session=scope.session, turn=turn, transcript=text, speech_start_ns=start_ns,
                speech_end_ns=end_ns, decode_ms=decode_ms, at_ns=at_ns, speculation=speculation,
            ))
        await self._turn_done(turn)
        metrics.STAGE_DELAY.record(max(0.0, (time.time_ns() - end_ns) / 1e9),
                                   {"stage": "stt", "step": "final_transcript"})
        if text:
            metrics.TURNS.add(1, {"stage": "stt"})
        stats.finals += 1
        stats.decode_ms.append(decode_ms)
        stats.audio_ms.append(audio_ms)
        if speculation:
            stats.speculative_committed += 1
        scope.log.info("final_transcript", turn=turn, decode_ms=decode_ms,
                       audio_ms=round(audio_ms, 1), forced=forced, empty=not text,
                       speculation=speculation, narrowband=result.narrowband,
                       pii={"text": text})


async def _nothing_said(audio: Float32Array) -> TranscriptResult:
    """The final of a turn that was not the caller's."""
    return TranscriptResult(text="", decode_s=0.0, audio_s=audio.size / WHISPER_RATE_HZ)
