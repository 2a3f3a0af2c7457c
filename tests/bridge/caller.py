"""Test helpers: a scripted LiveKit caller and a bus tap."""

from __future__ import annotations

import asyncio
import contextlib
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from livekit import api, rtc
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts import decode
from contracts.messages import AnyMessage, AudioIn, Message
from runtime.bus import Bus
from services.bridge.audio import rms
from tests.conftest import REGION

SPEECH = Path(__file__).resolve().parents[1] / "fixtures" / "speech"
SILENT_RMS = 200.0
M = TypeVar("M", bound=Message)


def load_wav(name: str) -> tuple[np.ndarray, int]:
    with wave.open(str(SPEECH / name), "rb") as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()


def resample(x: np.ndarray, rate: int, out_rate: int) -> np.ndarray:
    n = round(len(x) * out_rate / rate)
    y = np.interp(np.arange(n) * (rate / out_rate), np.arange(len(x)), x.astype(np.float64))
    out: np.ndarray = np.rint(y).astype("<i2")
    return out


def tone(seconds: float, rate: int = 24_000, hz: float = 300.0, amp: int = 8000) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * amp).astype("<i2")


@dataclass
class Heard:
    t: float
    rms: float


@dataclass
class Caller:
    """A participant that publishes a microphone track and records what the agent says."""

    url: str
    key: str
    secret: str
    room_name: str
    identity: str = "caller-1"
    agent_identity: str = "voxbus-agent"
    rate: int = 16_000
    channels: int = 1
    room: rtc.Room = field(default_factory=rtc.Room)
    heard: list[Heard] = field(default_factory=list)
    first_voice_sent: float = 0.0
    captions: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    connect_s: float = 0.0
    _source: rtc.AudioSource | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    agent_track: asyncio.Event = field(default_factory=asyncio.Event)

    def token(self) -> str:
        return (
            api.AccessToken(self.key, self.secret)
            .with_identity(self.identity)
            .with_grants(api.VideoGrants(room_join=True, room=self.room_name))
            .to_jwt()
        )

    async def join(self, *, publish: bool = True) -> None:
        self.room.on("track_subscribed", self._on_track)
        self.room.register_text_stream_handler("lk.transcription", self._on_caption)
        t0 = time.perf_counter()
        await self.room.connect(self.url, self.token())
        self.connect_s = time.perf_counter() - t0
        if publish:
            self._source = rtc.AudioSource(self.rate, self.channels, queue_size_ms=100)
            track = rtc.LocalAudioTrack.create_audio_track("mic", self._source)
            await self.room.local_participant.publish_track(
                track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            )

    def _on_track(
        self, track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant
    ) -> None:
        if p.identity == self.agent_identity and track.kind == rtc.TrackKind.KIND_AUDIO:
            self._tasks.append(asyncio.create_task(self._listen(track)))

    def _on_caption(self, reader: rtc.TextStreamReader, sender: str) -> None:
        async def read() -> None:
            text = await reader.read_all()
            self.captions.append((sender, text, dict(reader.info.attributes or {})))

        self._tasks.append(asyncio.create_task(read()))

    async def _listen(self, track: rtc.Track) -> None:
        self.agent_track.set()
        stream = rtc.AudioStream(track, sample_rate=24_000, num_channels=1, frame_size_ms=10)
        try:
            async for ev in stream:
                self.heard.append(Heard(time.monotonic(), rms(ev.frame.data.tobytes())))
        finally:
            await stream.aclose()

    async def play(self, pcm: np.ndarray, *, frame_ms: int = 20) -> None:
        """Publish interleaved PCM16 paced like a microphone (by the wall clock)."""
        assert self._source is not None
        n = self.rate * frame_ms // 1000
        step = n * self.channels
        t0 = time.monotonic()
        for i in range(0, len(pcm) - step + 1, step):
            chunk = pcm[i : i + step]
            if not self.first_voice_sent and rms(chunk.tobytes()) > SILENT_RMS:
                self.first_voice_sent = time.monotonic()
            await self._source.capture_frame(rtc.AudioFrame(chunk.tobytes(), self.rate,
                                                            self.channels, n))
            delay = t0 + (i // step + 1) * frame_ms / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    def first_voice_heard(self, after: float = 0.0) -> float | None:
        for h in self.heard:
            if h.t >= after and h.rms > SILENT_RMS:
                return h.t
        return None

    def silent_since(self, after: float, *, hold_s: float = 0.2) -> float | None:
        """Start of the first stretch of at least ``hold_s`` silence after ``after``."""
        start: float | None = None
        for h in self.heard:
            if h.t < after:
                continue
            if h.rms <= SILENT_RMS:
                if start is None:
                    start = h.t
                if h.t - start >= hold_s:
                    return start
            else:
                start = None
        return None

    def voiced_after(self, t: float) -> int:
        return sum(1 for h in self.heard if h.t >= t and h.rms > SILENT_RMS)

    async def leave(self) -> None:
        await self.room.disconnect()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._source is not None:
            await self._source.aclose()


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
