"""What the stage hears of the unseen sentences (``tests/fixtures/varied``: five voices, a third
under white noise or babble) after the room's Opus codec, cut by its own VAD and turn detector
and decoded by its final engine with the default settings, as ``voxbus bench hearing`` does:
every sentence is one turn, and the word error rate stays within a bound over what the defaults
reach: 10 of 183 words (0.055) on 2026-12-06 with greedy search (18 with a beam of 5, which
writes down more of the babble that holds a turn open after the caller's words: "...still
open. I would like to order a large")."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from voxbus.bench.hearing import hear, opus_roundtrip
from voxbus.services.stt.audio import load_wav_16k_mono
from voxbus.services.stt.decoding import build_engine
from voxbus.services.stt.engine import WhisperEngine
from voxbus.services.stt.normalize import normalize_text, word_errors
from voxbus.services.stt.settings import SttSettings

pytestmark = pytest.mark.model

VARIED = Path(__file__).resolve().parents[1] / "fixtures" / "varied"


@pytest.fixture(scope="module")
def final_engine() -> Iterator[WhisperEngine]:
    yield build_engine(SttSettings())


def test_the_varied_sentences_through_opus_within_the_bound(final_engine: WhisperEngine) -> None:
    settings = SttSettings()

    def decode(audio: object) -> tuple[str, float, bool]:
        r = final_engine.transcribe(audio)  # type: ignore[arg-type]
        return r.speech(settings.no_speech_threshold), r.decode_s, False

    items = json.loads((VARIED / "manifest.json").read_text())["items"]
    errors = words = 0
    split: list[str] = []
    for it in items:
        audio = opus_roundtrip(load_wav_16k_mono(VARIED / it["file"]))
        heard = hear(audio, it["speech_start_ms"], it["speech_end_ms"], settings, decode, None)
        if heard.turns - heard.phantom != 1:
            split.append(f"{it['file']}: {heard.turns} turns")
        errors += word_errors(it["text"], heard.text)
        words += len(normalize_text(it["text"]).split())
    assert not split, split
    assert errors / words <= 0.08, (errors, words)
