"""The scripted fake synthesizer."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from voxbus.services.tts.engine import Synthesizer, UnknownVoice
from voxbus.services.tts.fake import FakeSynthesizer

pytestmark = pytest.mark.fast


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_length_is_proportional_to_text() -> None:
    fake = FakeSynthesizer(seconds_per_char=0.05)
    assert isinstance(fake, Synthesizer)
    short, long = fake.synthesize("Sure,"), fake.synthesize("Sure, I can help.")
    assert short.size == round(5 * 0.05 * 24_000)
    assert long.size == round(17 * 0.05 * 24_000)
    assert short.dtype == np.float32
    assert float(np.abs(long).max()) > 0.1


def test_silence_and_empty() -> None:
    fake = FakeSynthesizer(tone_hz=None)
    assert not fake.synthesize("Hello there.").any()
    assert fake.synthesize("...").size == 0
    assert fake.synthesize("🙂").size == 0


def test_scripted_delays_on_a_virtual_clock() -> None:
    clock = Clock()
    fake = FakeSynthesizer(delay_s=[0.4, 0.2], delay_per_char_s=0.01, sleep=clock.sleep)
    for text in ("Sure,", "I can help.", "Bye."):
        fake.synthesize(text)
    assert clock.sleeps == pytest.approx([0.45, 0.31, 0.24])
    assert [c.text for c in fake.calls] == ["Sure,", "I can help.", "Bye."]
    assert all(c.voice == "af_heart" and c.samples > 0 for c in fake.calls)


def test_voices_errors_and_warmup() -> None:
    fake = FakeSynthesizer(errors={"boom": RuntimeError("engine failed")})
    fake.warmup()
    assert fake.warmed_up
    with pytest.raises(UnknownVoice):
        fake.synthesize("Hi.", "zz_nobody")
    with pytest.raises(RuntimeError, match="engine failed"):
        fake.synthesize("boom")
    assert fake.calls[-1].samples == -1
    assert fake.synthesize("Hi.", "bf_emma").size > 0
    with pytest.raises(ValueError):
        FakeSynthesizer(voices=["bf_emma"])


async def test_runs_in_a_thread_off_the_loop() -> None:
    fake = FakeSynthesizer(delay_s=0.05)
    audio = await asyncio.to_thread(fake.synthesize, "Threaded.")
    assert audio.size == round(fake.duration_s("Threaded.") * 24_000)
