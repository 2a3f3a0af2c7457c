"""A phone call into the voice loop (``voxbus demo --phone``): Debian's baresip dials the loop's
number through livekit-sip, says a WAV once the call is up (and any greeting has played), and
hangs up after the agent's answer has played.

The latency is measured at the phone, on its own recordings: what it sent and what it heard
start together with the call's audio, so the end of the caller's words in the one and the
agent's first sound in the other are on one clock (to a 20 ms frame), whatever the network, the
jitter buffers and livekit-sip add between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
from nats.aio.msg import Msg

from voxbus.contracts.messages import (
    AgentSpoke,
    AudioOut,
    EndOfTurn,
    Message,
    ReplyEnd,
    SessionStarted,
)
from voxbus.contracts.subjects import PREFIX
from voxbus.dev import netns
from voxbus.dev.callers import wav_pcm
from voxbus.dev.sip_phone import PHONE_RATE_HZ, Pcm16, SipPhone
from voxbus.runtime.bus import Bus

#: A 20 ms frame louder than this (RMS of PCM16) is sound, at the phone.
SOUND_RMS = 300.0
FRAME = PHONE_RATE_HZ // 50


@dataclass
class PhoneTurn:
    transcript: str = ""
    reply: str = ""
    #: What the phone heard of the agent, from its first sound after the caller's words.
    heard: Pcm16 = field(default_factory=lambda: np.zeros(0, np.int16))
    #: From the end of the caller's words to the agent's first sound, at the phone (ms).
    voice_to_voice_ms: float | None = None
    session: str = ""
    errors: list[str] = field(default_factory=list)


def _loud(pcm: Pcm16) -> npt.NDArray[np.bool_]:
    """Per 20 ms frame: louder than ``SOUND_RMS``."""
    n = pcm.size // FRAME
    frames = pcm[: n * FRAME].astype(np.float64).reshape(n, FRAME)
    loud: npt.NDArray[np.bool_] = np.sqrt((frames ** 2).mean(axis=1)) > SOUND_RMS
    return loud


def voice_to_voice(sent: Pcm16, heard: Pcm16, words: Pcm16, speech_end_ms: float,
                   *, after: int = 0) -> tuple[int, int] | None:
    """(the caller's speech end, the agent's first sound after it), in samples of the call:
    the words are found in what the phone sent, from sample ``after`` on, by their first loud
    frame."""
    start = after // FRAME * FRAME
    loud_words, loud_sent = _loud(words), _loud(sent[start:])
    if not loud_words.any() or not loud_sent.any():
        return None
    onset_in_words = int(np.argmax(loud_words)) * FRAME
    # the first sound the phone sent that is the words (its microphone is silent before them)
    onset_in_call = start + int(np.argmax(loud_sent)) * FRAME
    end = onset_in_call + int(speech_end_ms * PHONE_RATE_HZ / 1000) - onset_in_words
    loud_heard = _loud(heard)
    sound = np.nonzero(loud_heard[end // FRAME:])[0]
    if sound.size == 0:
        return None
    return end, (end // FRAME + int(sound[0])) * FRAME


class _Watch:
    """The region's session messages as they come (core subscription), in order."""

    def __init__(self, bus: Bus, region: str) -> None:
        self.bus, self.region = bus, region
        self.got: list[Message] = []
        self.changed = asyncio.Event()

    async def _on(self, raw: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            self.got.append(await self.bus.read(raw.subject, raw.data))
            self.changed.set()

    async def wait(self, kind: type[Message], timeout_s: float,
                   where: Callable[[Any], bool] | None = None) -> Message:
        deadline = time.monotonic() + timeout_s
        while True:
            for m in self.got:
                if isinstance(m, kind) and (where is None or where(m)):
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind.__name__} within {timeout_s:g} s")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)


async def _greeting_played(watch: _Watch, session: str, timeout_s: float) -> None:
    """Until the agent's greeting (the turn-0 reply, which has no ``AgentSpoke``) has played:
    its last frame on the bus, then as long as its audio lasts from its first frame."""
    def greeting(m: Any) -> bool:
        return isinstance(m, AudioOut) and m.session == session and m.turn == 0

    await watch.wait(AudioOut, timeout_s, lambda m: greeting(m) and m.last)
    frames = [m for m in watch.got if isinstance(m, AudioOut) and greeting(m)]
    seconds = sum(len(m.pcm) / 2 / m.channels / m.sample_rate_hz for m in frames)
    first_ns = min(m.emitted_ns for m in frames)
    await asyncio.sleep(max(0.0, first_ns / 1e9 + seconds + 0.3 - time.time()))


class PhoneConversation:
    """A phone call to the loop's number, turn after turn (``say``); ``async with``."""

    def __init__(self, bus: Bus, region: str, uri: str, *, tmp: Path,
                 timeout_s: float = 60.0, greeting: bool = False) -> None:
        self.bus, self.region, self.uri = bus, region, uri
        self.timeout_s, self.greeting = timeout_s, greeting
        self.watch = _Watch(bus, region)
        address = netns.Veth().addresses[1] if netns.in_private_netns() else "127.0.0.1"
        self.phone = SipPhone(tmp=tmp, address=address, user="+15550123")
        self.session = ""
        self._sub: Any = None
        self._turn = 0

    async def __aenter__(self) -> PhoneConversation:
        self._sub = await self.bus.nc.subscribe(f"{PREFIX}.{self.region}.>",
                                                cb=self.watch._on)
        try:
            await self.phone.start()
            await self.phone.dial(self.uri)
            started = await self.watch.wait(SessionStarted, self.timeout_s)
            self.session = started.session
            await self.phone.wait("CALL_ESTABLISHED", self.timeout_s)
            if self.greeting:
                await _greeting_played(self.watch, self.session, self.timeout_s)
            await asyncio.sleep(1.0)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.phone.hangup()
        await self.phone.stop()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def say(self, wav: Path, speech_end_ms: float) -> PhoneTurn:
        """Say ``wav`` and wait for the agent's answer to it to play out."""
        words = wav_pcm(wav, PHONE_RATE_HZ)
        turn = PhoneTurn(session=self.session)
        mine, watch, timeout_s = self.session, self.watch, self.timeout_s
        before = (await asyncio.to_thread(self.phone.sent)).size
        try:
            await self.phone.say(words)
            eot = await watch.wait(EndOfTurn, timeout_s, lambda m: (
                m.session == mine and not m.speculative and m.turn > self._turn))
            assert isinstance(eot, EndOfTurn)
            self._turn = eot.turn
            turn.transcript = eot.transcript
            end = await watch.wait(ReplyEnd, timeout_s, lambda m: (
                m.session == mine and m.turn == eot.turn))
            assert isinstance(end, ReplyEnd)
            turn.reply = end.text
            await watch.wait(AgentSpoke, timeout_s, lambda m: (
                m.session == mine and m.turn == eot.turn))
            await asyncio.sleep(0.5)  # the last packets on their way
        except TimeoutError as e:
            turn.errors.append(str(e))
            return turn
        sent = await asyncio.to_thread(self.phone.sent)
        heard = await asyncio.to_thread(self.phone.heard)
        found = voice_to_voice(sent, heard, words, speech_end_ms, after=before)
        if found is None:
            turn.errors.append("no agent sound heard at the phone after the caller's words")
            return turn
        speech_end, first_sound = found
        turn.voice_to_voice_ms = (first_sound - speech_end) * 1000 / PHONE_RATE_HZ
        turn.heard = heard[first_sound:]
        return turn


async def call_in(bus: Bus, region: str, uri: str, wav: Path, speech_end_ms: float, *,
                  tmp: Path, timeout_s: float = 60.0, greeting: bool = False) -> PhoneTurn:
    """Dial ``uri``, say ``wav`` once and wait for the agent's answer to play out."""
    try:
        async with PhoneConversation(bus, region, uri, tmp=tmp, timeout_s=timeout_s,
                                     greeting=greeting) as call:
            return await call.say(wav, speech_end_ms)
    except TimeoutError as e:
        return PhoneTurn(errors=[str(e)])
