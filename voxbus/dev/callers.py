"""Callers of the voice loop: ``BusCaller`` speaks into a session over the bus (no LiveKit);
``RoomCaller`` is a participant in a LiveKit room with a live microphone, which also watches its
session on the bus for the per-stage times."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from voxbus.audio import convert_pcm16, read_wav
from voxbus.contracts.messages import AudioIn, SessionEnded
from voxbus.dev.livekit_caller import LISTEN_RATE_HZ, Caller
from voxbus.dev.probes import FIRST_AUDIO_RMS, SessionWatch, TurnResult
from voxbus.dev.supervise import LoopError
from voxbus.runtime.bus import Bus
from voxbus.runtime.caller_audio import CallerAudio

if TYPE_CHECKING:
    from voxbus.dev.loop import VoiceLoop

FRAME_MS = 20


class BusCaller:
    """Speaks WAV files into one session over the bus and listens to everything it gets back
    (``speaker``: the connection it speaks on, as the bridge would; by default ``bus``)."""

    def __init__(self, bus: Bus, region: str, session: str, *,
                 speaker: Bus | None = None) -> None:
        self.bus = bus
        self.speaker = speaker or bus
        self.region = region
        self.session = session
        self._seq = 0
        self.watch = SessionWatch(bus, region, session, done_on_spoken=False)
        #: Frames go out as the bridge sends them: acknowledged in the background, sent again
        #: in order when the stream stored nothing (a leader election, a broken link).
        self.audio = CallerAudio(self.speaker, region, name=session)

    async def subscribe(self) -> None:
        await self.watch.start()
        await self.audio.start()

    async def _frame(self, pcm: bytes, rate: int, channels: int) -> None:
        await self.audio.send(AudioIn(
            session=self.session, seq=self._seq, sample_rate_hz=rate, channels=channels,
            capture_ns=time.time_ns(), pcm=pcm, participant="caller",
            turns_heard=self.watch.last_done_turn))
        self._seq += 1

    async def say(self, wav: Path, speech_end_ms: float, *, timeout_s: float = 30.0) -> TurnResult:
        """Speak ``wav`` in real time, then keep sending silence until the answer is complete."""
        w = read_wav(wav)
        step = w.sample_rate_hz * w.channels * 2 * FRAME_MS // 1000
        result = TurnResult(session=self.session)
        self.watch.begin(result)
        start = time.monotonic()
        wall0 = time.time()
        result.speech_end = wall0 + speech_end_ms / 1000
        silence = b"\0" * step
        n = 0
        while True:
            chunk = w.pcm[n * step:(n + 1) * step] if n * step < len(w.pcm) else silence
            await self._frame(chunk.ljust(step, b"\0"), w.sample_rate_hz, w.channels)
            n += 1
            if self.watch.done.is_set() or time.monotonic() - start > timeout_s:
                break
            await asyncio.sleep(max(0.0, start + n * FRAME_MS / 1000 - time.monotonic()))
        self.watch.end()
        if not self.watch.done.is_set():
            result.errors.append(f"no complete answer within {timeout_s:.0f}s")
        return result

    async def hang_up(self, reason: str = "participant_left") -> None:
        """What the bridge says when a caller leaves: the stages free the session now."""
        await self.audio.flush(5.0)
        await self.speaker.publish(self.region, SessionEnded(
            session=self.session, reason=reason, at_ns=time.time_ns()))

    async def close(self) -> None:
        await self.audio.close()
        await self.watch.stop()


def wav_pcm(wav: Path, rate: int) -> np.ndarray:
    """A WAV as mono PCM16 at ``rate``."""
    w = read_wav(wav)
    pcm = convert_pcm16(w.pcm, rate=w.sample_rate_hz, channels=w.channels, out_rate=rate)
    return np.frombuffer(pcm, dtype="<i2").copy()


class RoomCaller:
    """A caller in a LiveKit room with the agent: speaks WAVs through a live microphone, hears
    the answer in the room, and reads its session's bus traffic for the per-stage times."""

    def __init__(self, caller: Caller, bus: Bus, region: str, session: str) -> None:
        self.caller = caller
        self.session = session
        self.watch = SessionWatch(bus, region, session, done_on_spoken=True)

    @classmethod
    async def connect(cls, loop: VoiceLoop, room: str, identity: str = "caller",
                      *, timeout_s: float = 20.0, region: str | None = None) -> RoomCaller:
        """Dispatch the agent into ``room`` for ``region`` (default: the loop's first) and
        join it as ``identity``."""
        from voxbus.services.bridge.dispatch import request_dispatch
        from voxbus.services.bridge.session import session_id_for, session_key

        region = region or loop.region
        lk, bus = loop.livekit, loop.buses.get(region)
        if lk is None or bus is None:
            raise LoopError("the loop runs without LiveKit (VoiceLoop(livekit=True))")
        op = loop.identities.get("operator", region) if loop.identities else None
        answer = await request_dispatch(room, nats_url=loop.url(region), region=region,
                                        timeout_s=timeout_s, user=op.user if op else None,
                                        password=op.password if op else None,
                                        inbox_prefix=op.inbox_prefix if op else None)
        if not answer.ok:
            raise LoopError(f"the bridge did not join room {room!r}: {answer.error}")
        caller = Caller(lk.url, lk.config.api_key, lk.config.api_secret, room,
                        identity=identity)
        try:
            await caller.join(timeout_s=timeout_s)
        except Exception as e:
            await caller.leave()
            raise LoopError(f"the caller could not join room {room!r}: {e!r}") from e
        key = session_key({**os.environ, **loop.extra_env}.get("BRIDGE_SESSION_KEY", ""),
                          lk.config.api_secret)  # as the bridge makes the id
        session = session_id_for(key, room, identity, caller.room.local_participant.sid)
        rc = cls(caller, bus, region, session)
        await rc.watch.start()
        caller.start_mic()
        try:
            async with asyncio.timeout(timeout_s):
                await caller.agent_track.wait()
                await caller.mic_subscribed.wait()
                await rc.watch.audio_in.wait()  # the bridge hears us: the session is up
        except TimeoutError:
            await rc.close()
            raise LoopError(
                f"room {room!r}: no agent track, or the bridge never heard the caller "
                f"(agent track: {caller.agent_track.is_set()}, "
                f"subscribed: {caller.mic_subscribed.is_set()})"
            ) from None
        return rc

    async def say(self, wav: Path | np.ndarray, speech_end_ms: float, *,
                  timeout_s: float = 30.0, tail_s: float = 0.3) -> TurnResult:
        """Speak ``wav`` (a file, or PCM16 at the caller's rate) and wait until the agent has
        finished its answer (the bridge's ``AgentSpoke``) or ``timeout_s`` after the end of the
        speech. The result has the bus times and the first agent frame the caller heard; its
        ``audio`` is what the caller heard of the answer."""
        pcm = wav_pcm(wav, self.caller.rate) if isinstance(wav, Path) else wav
        result = TurnResult(session=self.session, audio_rate_hz=LISTEN_RATE_HZ)
        self.watch.begin(result)
        try:
            spoken = await self.caller.say(pcm)
            end_mono = spoken.at(speech_end_ms / 1000)
            result.speech_end = spoken.wall_at(speech_end_ms / 1000)
            left = end_mono + timeout_s - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.watch.done.wait(), max(0.0, left))
            if not self.watch.done.is_set():
                result.errors.append(f"no complete answer within {timeout_s:.0f}s")
            await asyncio.sleep(tail_s)  # the last frames are still on their way
        finally:
            self.watch.end()
        first = self.caller.first_frame_heard(end_mono, threshold=FIRST_AUDIO_RMS)
        if first is not None:
            result.caller_first_audio = first.wall
            result.audio = bytearray(self.caller.audio_between(first.t - 0.02))
        else:
            result.audio = bytearray()
        return result

    async def close(self) -> None:
        await self.watch.stop()
        await self.caller.leave()

