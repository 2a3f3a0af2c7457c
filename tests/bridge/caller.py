"""Test helpers: the scripted LiveKit caller (``voxbus.dev.livekit_caller``), fixture audio
and a bus tap."""

from __future__ import annotations

import asyncio
import contextlib
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tests.conftest import REGION
from voxbus.audio import convert_pcm16
from voxbus.contracts import decode
from voxbus.contracts.messages import AnyMessage, AudioIn, Message
from voxbus.dev.livekit_caller import SILENT_RMS, Caller, Heard
from voxbus.runtime.bus import Bus

SPEECH = Path(__file__).resolve().parents[1] / "fixtures" / "speech"
M = TypeVar("M", bound=Message)
__all__ = ["SILENT_RMS", "Caller", "Heard", "Tap", "load_wav", "resample", "tone"]


def load_wav(name: str) -> tuple[np.ndarray, int]:
    with wave.open(str(SPEECH / name), "rb") as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()


def resample(x: np.ndarray, rate: int, out_rate: int) -> np.ndarray:
    """PCM16 samples at ``rate`` as PCM16 samples at ``out_rate`` (the one resampler)."""
    pcm = convert_pcm16(x.astype("<i2").tobytes(), rate=rate, channels=1, out_rate=out_rate)
    return np.frombuffer(pcm, dtype="<i2").copy()


def tone(seconds: float, rate: int = 24_000, hz: float = 300.0, amp: int = 8000) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * amp).astype("<i2")


class Tap:
    """Everything published for the test region, as decoded messages with arrival times."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.msgs: list[tuple[float, str, AnyMessage]] = []
        self._sub: Subscription | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        self._sub = await self.bus.nc.subscribe(f"voxbus.{REGION}.>", cb=self._on)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _on(self, raw: Msg) -> None:
        with contextlib.suppress(Exception):
            self.msgs.append((time.monotonic(), raw.subject, decode(raw.data)))
            self._changed.set()

    def of(self, kind: type[M], session: str | None = None) -> list[M]:
        return [m for _, _, m in self.msgs
                if isinstance(m, kind) and (session is None or m.session == session)]

    def timed(self, kind: type[M]) -> list[tuple[float, M]]:
        return [(t, m) for t, _, m in self.msgs if isinstance(m, kind)]

    async def wait_for(
        self, kind: type[M], *, session: str | None = None, within_s: float = 10.0,
        where: Callable[[M], bool] | None = None,
    ) -> M:
        deadline = time.monotonic() + within_s
        while True:
            for m in self.of(kind, session):
                if where is None or where(m):
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind.__name__} in {within_s} s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))

    def audio_in(self, session: str) -> list[AudioIn]:
        return self.of(AudioIn, session)
