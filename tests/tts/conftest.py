"""TTS test fixtures: one real Kokoro engine per session (tests using it are marked ``model``)."""

from __future__ import annotations

import threading
import time

import pytest

from voxbus.runtime.engine_thread import Abort
from voxbus.services.tts.engine import KokoroEngine, SynthesisAborted, Synthesizer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "model: loads a real model (slow)")


@pytest.fixture(scope="session")
def kokoro() -> KokoroEngine:
    """The real engine on the default cache (``$VOXBUS_CACHE`` etc.), loaded and warmed once."""
    engine = KokoroEngine()
    engine.warmup()
    return engine


def abort_midway(engine: Synthesizer, text: str, after_s: float) -> tuple[object, float]:
    """Synthesize ``text`` in a thread and set its ``Abort`` after ``after_s``: what the
    synthesis ended with (``SynthesisAborted`` or the audio's size) and how long it ran on
    after the abort."""
    abort = Abort()
    outcome: list[BaseException | int] = []

    def run() -> None:
        try:
            outcome.append(engine.synthesize(text, abort=abort).size)
        except SynthesisAborted as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(after_s)
    started = time.monotonic()
    abort.set()
    thread.join()
    return outcome[0], time.monotonic() - started
