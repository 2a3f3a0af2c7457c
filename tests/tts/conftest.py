"""TTS test fixtures: one real Kokoro engine per session (tests using it are marked ``model``)."""

from __future__ import annotations

import pytest

from voxbus.services.tts.engine import KokoroEngine


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "model: loads a real model (slow)")


@pytest.fixture(scope="session")
def kokoro() -> KokoroEngine:
    """The real engine on the default cache (``$VOXBUS_CACHE`` etc.), loaded and warmed once."""
    engine = KokoroEngine()
    engine.warmup()
    return engine
