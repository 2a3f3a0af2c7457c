"""What a TTS session needs of the worker it lives in (``TtsWorker``, which the ``TtsStage`` is)."""

from __future__ import annotations

from typing import Any, Protocol

from voxbus.contracts.messages import AudioOut

from .scheduler import SynthScheduler
from .settings import TtsSettings


class TtsWorker(Protocol):
    """What a session needs of the TTS worker it lives in (the ``TtsStage``)."""

    settings: TtsSettings
    voice: str

    @property
    def scheduler(self) -> SynthScheduler: ...

    @property
    def first_words(self) -> int: ...

    @property
    def sample_rate_hz(self) -> int: ...

    def check_voice(self, voice: str, logger: Any) -> str: ...

    def end_marker(self, session: str, turn: int, seq: int, text_start: int, text_end: int, *,
                   speculation: int = 0) -> AudioOut: ...
