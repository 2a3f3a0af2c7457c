"""Turn detection from voice-activity probabilities: pure and clock-free.

Time is the number of 16 kHz samples consumed, so the same input always gives the same events.

`TurnDetector` turns (probability, window length) pairs into events:

- `SpeechStarted`: once `min_speech_ms` of speech has accumulated (clicks never get there); it
  reports the onset, the first window at or above `start_threshold`.
- `PartialDue`: every `partial_interval_ms` of speech while the user speaks.
- `SilenceBegan`: the probability fell below `stop_threshold` (after `speculative_silence_ms`);
  a speculative final may start on the audio span it names.
- `SpeechResumed`: speech (>= `start_threshold`) came back before the turn ended: drop the
  speculative final.
- `EndOfTurn`: `end_silence_ms` of silence; its audio span is exactly the last SilenceBegan's, so
  a speculative result for that span is the final. With a turn model (``judge``: Smart Turn),
  the model is asked once, after `model_silence_ms` of silence, whether the utterance so far is
  complete: if so the turn ends there, else only after `incomplete_silence_ms` (a user who
  paused mid-sentence keeps the turn). `forced=True` when the turn hit
  `max_utterance_ms` (a new turn starts at once if the user is still speaking) or the stream ended.
- Talk behind the caller: Silero scores any voice as speech, so people talking near the caller
  hold a turn open until they stop. With `words_pause_ms`, the decodes of the partials say
  where the caller's words end (`words_heard`): when one heard no word in its last
  `words_pause_ms` while the VAD still hears speech, that is taken as the caller's pause,
  and the turn ends as on silence (the turn model asked; without a word for
  `incomplete_silence_ms`, it ends anyway), cut in the middle of the pause, and the next turn
  opens there. Whisper hears the caller, near the microphone, over the talk behind them; alone,
  the talk comes out as words too, so the `Segmenter` counts only the words loud enough to be
  the caller's (``Foreground``), and takes these hints only once it knows the caller's voice
  (after their first turn); the turns of talk alone that follow are dropped.

`Segmenter` runs a `VoiceActivity` over audio chunks of any length, feeds the detector and keeps a
bounded buffer of the current utterance (with `pre_roll_ms` before the onset), so each event
arrives with the audio it refers to.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from voxbus.audio import Float32Array
from voxbus.services.stt.audio import WHISPER_RATE_HZ
from voxbus.services.stt.denoise import Denoiser
from voxbus.services.stt.foreground import Foreground
from voxbus.services.stt.vad import VoiceActivity


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnConfig:
    sample_rate_hz: int = WHISPER_RATE_HZ
    start_threshold: float = 0.5
    stop_threshold: float = 0.35
    min_speech_ms: int = 200
    end_silence_ms: int = 300
    speculative_silence_ms: int = 0  # 0: SilenceBegan on the first silent window
    pre_roll_ms: int = 200
    partial_interval_ms: int = 400
    max_utterance_ms: int = 30_000
    # with a turn model: when it is asked, and how long an incomplete-sounding pause may last
    model_silence_ms: int = 200
    incomplete_silence_ms: int = 1000
    model_tail_ms: int = 100  # silence after the last speech window that the model hears
    words_pause_ms: int = 0  # a pause in the decoded words that ends a turn (0: off)

    def __post_init__(self) -> None:
        if not 0.0 <= self.stop_threshold <= self.start_threshold <= 1.0:
            raise ValueError("need 0 <= stop_threshold <= start_threshold <= 1")
        if min(self.min_speech_ms, self.pre_roll_ms, self.speculative_silence_ms,
               self.model_tail_ms, self.words_pause_ms) < 0:
            raise ValueError("durations must be >= 0")
        if self.end_silence_ms <= 0 or self.partial_interval_ms <= 0:
            raise ValueError("end_silence_ms and partial_interval_ms must be > 0")
        if self.speculative_silence_ms > self.end_silence_ms:
            raise ValueError("speculative_silence_ms must not exceed end_silence_ms")
        if self.max_utterance_ms <= self.pre_roll_ms + self.min_speech_ms:
            raise ValueError("max_utterance_ms is too short")
        if not 0 < self.model_silence_ms <= self.incomplete_silence_ms:
            raise ValueError("need 0 < model_silence_ms <= incomplete_silence_ms")

    def samples(self, ms: int) -> int:
        return ms * self.sample_rate_hz // 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechStarted:
    at_sample: int  # stream position when confirmed
    speech_start_sample: int  # onset


@dataclass(frozen=True, slots=True, kw_only=True)
class PartialDue:
    at_sample: int
    speech_start_sample: int
    audio_start_sample: int  # decode [audio_start_sample, at_sample)


@dataclass(frozen=True, slots=True, kw_only=True)
class SilenceBegan:
    at_sample: int
    speech_start_sample: int
    speech_end_sample: int
    audio_start_sample: int  # a speculative final decodes [audio_start, audio_end)
    audio_end_sample: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechResumed:
    at_sample: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EndOfTurn:
    at_sample: int
    speech_start_sample: int
    speech_end_sample: int
    audio_start_sample: int
    audio_end_sample: int
    forced: bool = False


TurnEvent = SpeechStarted | PartialDue | SilenceBegan | SpeechResumed | EndOfTurn


class _State(enum.Enum):
    IDLE = "idle"
    PENDING = "pending"  # above threshold, not yet min_speech_ms of speech
    SPEAKING = "speaking"


class TurnDetector:
    """Feed `push(probability, num_samples)` per VAD window, in stream order. ``judge(start,
    end)``: whether the utterance in that span of samples sounds complete (a turn model)."""

    def __init__(self, config: TurnConfig | None = None,
                 judge: Callable[[int, int], bool] | None = None) -> None:
        self.config = config or TurnConfig()
        c = self.config
        self._judge = judge
        self._min_speech = c.samples(c.min_speech_ms)
        self._end_silence = c.samples(c.end_silence_ms)
        self._model_silence = c.samples(c.model_silence_ms)
        self._incomplete_silence = c.samples(c.incomplete_silence_ms)
        self._model_tail = c.samples(c.model_tail_ms)
        self._speculative = c.samples(c.speculative_silence_ms)
        self._pre_roll = c.samples(c.pre_roll_ms)
        self._partial_every = c.samples(c.partial_interval_ms)
        self._max_span = c.samples(c.max_utterance_ms)
        self._words_pause = c.samples(c.words_pause_ms)
        self.reset()

    def reset(self) -> None:
        self._now = 0
        self._state = _State.IDLE
        self._onset = 0
        self._audio_start = 0
        self._speech_end = 0
        self._speech_total = 0
        self._since_partial = 0
        self._silent = False
        self._silence_run = 0
        self._announced: SilenceBegan | None = None
        self._verdict: bool | None = None  # the turn model's, for the current pause
        self.judged = self.judged_complete = 0
        self.ended_on_words = 0  # turns ended by a pause in the words (``words_heard``)

    @property
    def position(self) -> int:
        """Samples consumed so far."""
        return self._now

    @property
    def speaking(self) -> bool:
        """A confirmed turn is open (it may be in its trailing silence)."""
        return self._state is _State.SPEAKING

    @property
    def retain_from_sample(self) -> int:
        """Earliest sample any later event can refer to; older audio may be dropped."""
        if self._state is _State.IDLE:
            return max(0, self._now - self._pre_roll)
        return self._audio_start

    def push(self, probability: float, num_samples: int) -> list[TurnEvent]:
        if num_samples <= 0:
            raise ValueError("num_samples must be > 0")
        c = self.config
        start, end = self._now, self._now + num_samples
        self._now = end
        events: list[TurnEvent] = []
        if self._state is _State.IDLE:
            if probability >= c.start_threshold:
                self._open(start, self._pre_roll)
                self._speech_window(start, end, events)
            return events

        # PENDING or SPEAKING: hysteresis, entering silence below stop, leaving it at start.
        is_speech = probability >= (c.start_threshold if self._silent else c.stop_threshold)
        if is_speech:
            if self._silent and self._announced is not None:
                events.append(SpeechResumed(at_sample=end))
            self._silent = False
            self._silence_run = 0
            self._announced = None
            self._verdict = None
            self._speech_window(start, end, events)
        else:
            self._silence_window(end, num_samples, events)
        # Force a final before the next window of this size would overflow the buffer.
        if self._open_span(end) + num_samples > self._max_span:
            self._force(end, is_speech, events)
        return events

    def words_heard(self, *, audio_start: int, decoded_to: int, words_end: int,
                    cut_by: int | None = None) -> list[TurnEvent]:
        """A decode of ``[audio_start, decoded_to)`` of the open turn heard its last word end at
        sample ``words_end`` (``audio_start``: no word). Ends the turn when that is a pause of
        `words_pause_ms` the VAD did not hear (see the module's doc). ``cut_by``: the turn's
        audio ends there at the latest (where the caller may start again)."""
        if (self._words_pause <= 0 or self._state is not _State.SPEAKING or self._silent
                or audio_start != self._audio_start):
            return []
        pause = decoded_to - words_end
        if pause < self._words_pause:
            return []
        if words_end <= audio_start or pause >= self._incomplete_silence:
            complete = pause >= self._incomplete_silence
        elif self._judge is None:
            complete = True
        else:
            complete = self._ask(audio_start, min(decoded_to, words_end + self._model_tail))
        if not complete:
            return []
        self.ended_on_words += 1
        # cut in the pause (its middle, or the last `words_pause_ms` of a long one) and before
        # ``cut_by``, not at its end, where the caller may be starting their next words; the
        # talk goes on, so the next turn opens at the cut (the VAD hears speech there)
        cut = words_end + max(pause // 2, pause - self._words_pause)
        if cut_by is not None:
            cut = max(words_end, min(cut, cut_by))
        event = EndOfTurn(at_sample=self._now, speech_start_sample=self._onset,
                          speech_end_sample=max(words_end, self._onset),
                          audio_start_sample=self._audio_start, audio_end_sample=cut)
        self._open(cut, 0)
        self._speech_total = self._now - cut
        self._speech_end = self._now
        return [event]

    def finish(self) -> list[TurnEvent]:
        """End of stream: close an open turn (forced); drop an unconfirmed one."""
        events: list[TurnEvent] = []
        if self._state is _State.SPEAKING:
            events.append(self._end_of_turn(self._now, forced=True))
        self._state = _State.IDLE
        self._silent = False
        self._announced = None
        return events

    def _open_span(self, at: int) -> int:
        """Samples of audio the open turn holds at `at` (0 when idle)."""
        return 0 if self._state is _State.IDLE else at - self._audio_start

    def _open(self, onset: int, pre_roll: int) -> None:
        self._state = _State.PENDING
        self._onset = onset
        self._audio_start = max(0, onset - pre_roll)
        self._speech_total = 0
        self._since_partial = 0
        self._silent = False
        self._silence_run = 0
        self._announced = None
        self._verdict = None

    def _speech_window(self, start: int, end: int, events: list[TurnEvent]) -> None:
        n = end - start
        self._speech_end = end
        self._speech_total += n
        self._since_partial += n
        if self._state is _State.PENDING and self._speech_total >= self._min_speech:
            self._state = _State.SPEAKING
            events.append(SpeechStarted(at_sample=end, speech_start_sample=self._onset))
        if self._state is _State.SPEAKING and self._since_partial >= self._partial_every:
            self._since_partial = 0
            events.append(
                PartialDue(
                    at_sample=end,
                    speech_start_sample=self._onset,
                    audio_start_sample=self._audio_start,
                )
            )

    def _silence_window(self, end: int, n: int, events: list[TurnEvent]) -> None:
        self._silent = True
        self._silence_run += n
        if self._state is _State.PENDING:
            if self._silence_run >= self._end_silence:
                self._state = _State.IDLE  # too little speech: a click or a breath
            return
        if self._announced is None and self._silence_run >= self._speculative:
            self._announced = SilenceBegan(
                at_sample=end,
                speech_start_sample=self._onset,
                speech_end_sample=self._speech_end,
                audio_start_sample=self._audio_start,
                audio_end_sample=end,
            )
            events.append(self._announced)
        if self._silence_run >= self._required_silence(end):
            events.append(self._end_of_turn(end, forced=False))
            self._state = _State.IDLE
            self._silent = False
            self._announced = None
            self._verdict = None

    def _required_silence(self, end: int) -> int:
        """Silence that ends the turn now: the plain rule, or what the turn model allows."""
        if self._judge is None:
            return self._end_silence
        if self._verdict is None:
            if self._silence_run < self._model_silence:
                return self._model_silence
            # the model hears the utterance and model_tail_ms after its last speech window: it
            # is sensitive to that tail (for one pause mid-sentence, 0.08 with 200 ms after the
            # words and 0.91 with 250 ms; the VAD's last speech window ends ~50 ms after them)
            self._verdict = self._ask(self._audio_start,
                                      min(end, self._speech_end + self._model_tail))
        return self._model_silence if self._verdict else self._incomplete_silence

    def _ask(self, start: int, end: int) -> bool:
        """The turn model's verdict on ``[start, end)``: does the utterance sound complete?"""
        assert self._judge is not None
        complete = self._judge(start, end)
        self.judged += 1
        self.judged_complete += complete
        return complete

    def _end_of_turn(self, at: int, *, forced: bool) -> EndOfTurn:
        if self._announced is not None and not forced:
            audio_end = self._announced.audio_end_sample
        else:
            audio_end = at
        return EndOfTurn(
            at_sample=at,
            speech_start_sample=self._onset,
            speech_end_sample=self._speech_end if self._silent else at,
            audio_start_sample=self._audio_start,
            audio_end_sample=audio_end,
            forced=forced,
        )

    def _force(self, at: int, still_speaking: bool, events: list[TurnEvent]) -> None:
        if self._state is _State.PENDING:
            self._state = _State.IDLE
            return
        events.append(self._end_of_turn(at, forced=True))
        self._state = _State.IDLE
        self._announced = None
        if still_speaking:
            # The user is still talking: the next turn starts here, confirmed, without pre-roll
            # (that audio went into the forced final).
            self._open(at, 0)
            self._state = _State.SPEAKING
            self._speech_end = at
            events.append(SpeechStarted(at_sample=at, speech_start_sample=at))
        else:
            self._silent = False


class AudioBuffer:
    """A window of the stream addressed by absolute sample index, without per-append copying of
    the whole history (live data is compacted only when the free tail runs out)."""

    def __init__(self, capacity: int) -> None:
        self._data: Float32Array = np.zeros(max(capacity, 1), dtype=np.float32)
        self._lo = 0  # index in _data of absolute sample `start_sample`
        self._hi = 0
        self._start = 0

    @property
    def start_sample(self) -> int:
        return self._start

    @property
    def end_sample(self) -> int:
        return self._start + self._hi - self._lo

    def append(self, audio: Float32Array) -> None:
        n = audio.size
        if self._hi + n > self._data.size:
            live = self._hi - self._lo
            if live + n > self._data.size:
                grown = np.zeros(max(live + n, 2 * self._data.size), dtype=np.float32)
                grown[:live] = self._data[self._lo : self._hi]
                self._data = grown
            else:
                self._data[:live] = self._data[self._lo : self._hi]
            self._lo, self._hi = 0, live
        self._data[self._hi : self._hi + n] = audio
        self._hi += n

    def discard_before(self, sample: int) -> None:
        drop = min(max(0, sample - self._start), self._hi - self._lo)
        self._lo += drop
        self._start += drop

    def slice(self, start: int, end: int) -> Float32Array:
        """A copy of [start, end), clipped to what the buffer holds."""
        a = min(max(start, self._start), self.end_sample)
        b = min(max(end, a), self.end_sample)
        return self._data[self._lo + a - self._start : self._lo + b - self._start].copy()

    def clear(self) -> None:
        self._lo = self._hi = self._start = 0


@dataclass(frozen=True, slots=True)
class Segment:
    """A turn event with its audio: PartialDue -> the utterance so far; SilenceBegan and
    EndOfTurn -> the span to decode as (speculative) final; other events -> None."""

    event: TurnEvent
    audio: Float32Array | None = None
    #: An EndOfTurn whose voice was far under the caller's: people talking behind the caller
    #: (``Foreground``); its words are not the caller's.
    talk_behind: bool = False


class Segmenter:
    """VAD + TurnDetector + utterance buffer for one 16 kHz mono stream. Not thread-safe."""

    def __init__(self, *, vad: VoiceActivity, config: TurnConfig | None = None,
                 turn_model: Callable[[Float32Array], bool] | None = None,
                 denoiser: Denoiser | None = None, denoised_decode: bool = True,
                 foreground_db: float = 0.0) -> None:
        """``turn_model(audio)``: whether an utterance sounds complete (see ``TurnDetector``).
        ``denoiser``: the VAD (and, with ``denoised_decode``, the decodes) hear its output. Its
        output sample n is input sample n, so positions stay those of the input.
        ``foreground_db``: a turn whose voice is more than this under the caller's is talk
        behind them (``Foreground``, ``Segment.talk_behind``; 0: off)."""
        self._denoiser = denoiser
        self._denoised_decode = denoised_decode
        self.foreground = Foreground(margin_db=foreground_db,
                                     speech_threshold=(config or TurnConfig()).stop_threshold)
        self.detector = TurnDetector(
            config, None if turn_model is None
            else lambda start, end: turn_model(self._buffer.slice(start, end)))
        self.config = self.detector.config
        self._vad = vad
        c = self.config
        self._buffer = AudioBuffer(
            c.samples(c.max_utterance_ms + c.pre_roll_ms) + 4 * vad.window_samples
        )
        # (audio_start, decoded_to, word spans) from decodes, for the next push (any thread)
        self._words: deque[tuple[int, int, list[tuple[int, int]]]] = deque()

    @property
    def position(self) -> int:
        """Samples received (the detector lags by less than one VAD window)."""
        return self._buffer.end_sample

    def push(self, audio: Float32Array) -> list[Segment]:
        chunk = np.asarray(audio, dtype=np.float32)
        heard = chunk
        if self._denoiser is not None:
            heard = self._denoiser.process(chunk)
            if self._denoised_decode:
                chunk = heard
        self._buffer.append(chunk)
        out: list[Segment] = []
        while self._words:
            start, decoded_to, spans = self._words.popleft()
            if self.foreground.voice_db is None:
                continue  # whose words? Not known before the caller's first turn
            words_end = self.foreground.callers_words_end(spans)
            if words_end is None:
                words_end = start
            loud = self.foreground.callers_voice_after(words_end)  # they may be starting again
            out.extend(self._with_audio(e) for e in self.detector.words_heard(
                audio_start=start, decoded_to=decoded_to, words_end=words_end,
                cut_by=None if loud is None else loud - self.config.samples(
                    self.config.pre_roll_ms)))
        for window in self._vad.process(heard):
            n = window.end_sample - window.start_sample
            self.foreground.hear(window.probability, window.level_db, window.end_sample)
            out.extend(self._with_audio(e) for e in self.detector.push(window.probability, n))
        self._buffer.discard_before(self.detector.retain_from_sample)
        return out

    def words_heard(self, *, audio_start: int, decoded_to: int,
                    words: Sequence[tuple[float, float]]) -> None:
        """A partial's decode of ``[audio_start, decoded_to)`` heard these words ((start, end),
        seconds into it): where the last of the caller's ends goes to ``TurnDetector
        .words_heard`` (words far under the caller's voice are talk behind them). Safe from any
        thread: it is taken in order at the next ``push``."""
        rate = self.config.sample_rate_hz
        spans = [(audio_start + round(a * rate), min(decoded_to, audio_start + round(b * rate)))
                 for a, b in words]
        self._words.append((audio_start, decoded_to, spans))

    def finish(self) -> list[Segment]:
        """End of stream: a turn still open ends (forced) with the audio received so far."""
        out: list[Segment] = []
        for event in self.detector.finish():
            if isinstance(event, EndOfTurn):
                event = EndOfTurn(
                    at_sample=self.position,
                    speech_start_sample=event.speech_start_sample,
                    speech_end_sample=event.speech_end_sample,
                    audio_start_sample=event.audio_start_sample,
                    audio_end_sample=self.position,
                    forced=True,
                )
            out.append(self._with_audio(event))
        return out

    def reset(self) -> None:
        self._vad.reset()
        if self._denoiser is not None:
            self._denoiser.reset()
        self.foreground.reset()
        self.detector.reset()
        self._buffer.clear()
        self._words.clear()

    def _with_audio(self, event: TurnEvent) -> Segment:
        match event:
            case SpeechStarted():
                self.foreground.turn_started(event.speech_start_sample)
                return Segment(event)
            case EndOfTurn():
                audio = self._buffer.slice(event.audio_start_sample, event.audio_end_sample)
                behind = self.foreground.turn_ended(
                    event.at_sample / self.config.sample_rate_hz, event.audio_end_sample)
                return Segment(event, audio, talk_behind=behind)
            case PartialDue():
                return Segment(event, self._buffer.slice(event.audio_start_sample, event.at_sample))
            case SilenceBegan():
                audio = self._buffer.slice(event.audio_start_sample, event.audio_end_sample)
                return Segment(event, audio)
            case _:
                return Segment(event)
