"""A scripted ``Synthesizer`` for control-flow tests: no model, predictable lengths and delays."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from voxbus.runtime.engine_thread import Abort

from .engine import (
    DEFAULT_VOICE,
    SAMPLE_RATE_HZ,
    SynthesisAborted,
    check_voice,
    empty_audio,
)
from .normalize import is_speakable

FAKE_VOICES = ("af_heart", "am_michael", "bf_emma")


@dataclass(frozen=True, slots=True)
class FakeCall:
    text: str
    voice: str
    samples: int


class FakeSynthesizer:
    """Returns a tone (or silence) lasting ``seconds_per_char`` per character of the text.

    Before returning it blocks for ``delay_s + delay_per_char_s * len(text)`` through ``sleep``
    (inject a virtual clock's sleep for deterministic timing tests). ``delay_s`` may be a
    sequence: call ``i`` uses ``delay_s[i]`` (the last entry repeats). ``errors`` maps a text to
    the exception its synthesis raises. Unpronounceable text gives empty audio, like Kokoro.
    Every call (including failed ones, with ``samples=-1``) is recorded in ``calls``.
    """

    def __init__(
        self,
        *,
        seconds_per_char: float = 0.06,
        delay_s: float | Sequence[float] = 0.0,
        delay_per_char_s: float = 0.0,
        tone_hz: float | None = 220.0,
        amplitude: float = 0.2,
        voices: Sequence[str] = FAKE_VOICES,
        default_voice: str = DEFAULT_VOICE,
        sample_rate_hz: int = SAMPLE_RATE_HZ,
        errors: Mapping[str, Exception] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if default_voice not in voices:
            raise ValueError(f"default voice {default_voice!r} is not among {list(voices)}")
        self._seconds_per_char = seconds_per_char
        self._delays = (delay_s,) if isinstance(delay_s, int | float) else tuple(delay_s)
        self._delay_per_char_s = delay_per_char_s
        self._tone_hz = tone_hz
        self._amplitude = amplitude
        self._voices = tuple(voices)
        self._default_voice = default_voice
        self._sample_rate_hz = sample_rate_hz
        self._errors = dict(errors or {})
        self._sleep = sleep
        self._lock = threading.Lock()
        self.calls: list[FakeCall] = []
        self.warmed_up = False

    @property
    def sample_rate_hz(self) -> int:
        return self._sample_rate_hz

    @property
    def voices(self) -> tuple[str, ...]:
        return self._voices

    @property
    def default_voice(self) -> str:
        return self._default_voice

    def warmup(self) -> None:
        self.warmed_up = True

    def duration_s(self, text: str) -> float:
        """How long the audio for ``text`` will be."""
        return len(text.strip()) * self._seconds_per_char if is_speakable(text) else 0.0

    def synthesize(
        self, text: str, voice: str | None = None, *, abort: Abort | None = None
    ) -> NDArray[np.float32]:
        """``abort``: with the default ``time.sleep`` the delay ends as soon as it is set;
        with an injected ``sleep`` it is checked after the delay."""
        name = check_voice(self, voice)
        with self._lock:
            index = len(self.calls)
            self.calls.append(FakeCall(text, name, -1))
        delay = self._delays[min(index, len(self._delays) - 1)] if self._delays else 0.0
        delay += self._delay_per_char_s * len(text)
        if abort is not None and self._sleep is time.sleep:
            if abort.wait(max(delay, 0.0)):
                raise SynthesisAborted("aborted")
        elif delay > 0:
            self._sleep(delay)
        if abort is not None and abort.is_set():
            raise SynthesisAborted("aborted")
        if (error := self._errors.get(text)) is not None:
            raise error
        audio = self._audio(round(self.duration_s(text) * self._sample_rate_hz))
        with self._lock:
            self.calls[index] = FakeCall(text, name, audio.size)
        return audio

    def _audio(self, samples: int) -> NDArray[np.float32]:
        if samples <= 0:
            return empty_audio()
        if self._tone_hz is None:
            return np.zeros(samples, dtype=np.float32)
        t = np.arange(samples, dtype=np.float64) / self._sample_rate_hz
        tone = self._amplitude * np.sin(2.0 * np.pi * self._tone_hz * t)
        return tone.astype(np.float32)
