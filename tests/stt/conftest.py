"""STT test fixtures: the espeak-ng speech recordings and one shared Whisper engine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from voxbus.audio import Float32Array
from voxbus.services.stt.audio import load_wav_16k_mono
from voxbus.services.stt.engine import WhisperEngine

SPEECH_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "speech"


def pytest_configure(config: pytest.Config) -> None:
    # Harmless duplicate of pyproject's registration, so this folder also runs on its own.
    config.addinivalue_line("markers", "model: loads a real model (slow)")


@dataclass(frozen=True, slots=True)
class SpeechFixture:
    name: str
    path: Path
    text: str
    speech_start_ms: int
    speech_end_ms: int

    def audio(self) -> Float32Array:
        return load_wav_16k_mono(self.path)


def load_manifest() -> list[SpeechFixture]:
    manifest = json.loads((SPEECH_DIR / "manifest.json").read_text())
    assert manifest["sample_rate_hz"] == 16_000
    return [
        SpeechFixture(
            name=item["file"].removesuffix(".wav"),
            path=SPEECH_DIR / item["file"],
            text=item["text"],
            speech_start_ms=item["speech_start_ms"],
            speech_end_ms=item["speech_end_ms"],
        )
        for item in manifest["items"]
    ]


FIXTURES = load_manifest()
FIXTURE_IDS = [f.name for f in FIXTURES]
# espeak-ng speech that Whisper tiny.en still gets right after a trip through 8 kHz.
NARROWBAND_OK = ("traffic", "museum", "jacket")


def fixture_named(name: str) -> SpeechFixture:
    return next(f for f in FIXTURES if f.name == name)


@pytest.fixture(scope="session")
def whisper() -> Iterator[WhisperEngine]:
    engine = WhisperEngine()  # tiny.en, float32, 2 threads
    engine.warmup()
    yield engine
