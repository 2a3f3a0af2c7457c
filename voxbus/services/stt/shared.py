"""What the sessions of one STT worker share: its counters, and what a session needs of the
worker (``SttWorker``, which the ``SttStage`` is)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from voxbus.services.stt import turns
from voxbus.services.stt.decoding import Decoder
from voxbus.services.stt.settings import SttSettings


@dataclass
class SttStats:
    """Counters for benchmarks and tests."""

    sessions_opened: int = 0
    sessions_closed: int = 0
    partials_published: int = 0
    partials_skipped: int = 0
    speculative_started: int = 0
    speculative_discarded: int = 0
    speculative_published: int = 0  # speculative EndOfTurn out: a reply may start
    speculative_committed: int = 0  # a committed EndOfTurn confirmed the published guess
    finals: int = 0
    turns_judged: int = 0  # pauses Smart Turn was asked about
    turns_judged_complete: int = 0
    talk_behind: int = 0  # turns dropped as people talking behind the caller
    decode_ms: list[float] = field(default_factory=list)
    audio_ms: list[float] = field(default_factory=list)


class SttWorker(Protocol):
    """What a session needs of the STT worker it lives in (the ``SttStage``)."""

    settings: SttSettings
    stats: SttStats
    final: Decoder | None
    frontend: ThreadPoolExecutor | None

    def partial_decoder(self) -> Decoder | None: ...

    def closed(self, segmenter: turns.Segmenter) -> None: ...
