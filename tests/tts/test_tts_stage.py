"""The TTS stage on a real nats-server through the real worker: frames, spans, barge-in, bad input.

Control flow runs on the scripted ``FakeSynthesizer``; the ``model`` tests use the real Kokoro
engine (one per test session, from ``conftest``) and Whisper tiny.en for the round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import pytest
import structlog

from tests.conftest import REGION
from voxbus.audio import resample
from voxbus.contracts.messages import AudioOut, ErrorEvent, Interrupt, ReplyEnd, ReplyText
from voxbus.runtime.bus import Bus
from voxbus.runtime.testing import Tap, running, wait_until
from voxbus.runtime.worker import Worker
from voxbus.services.stt.engine import WhisperEngine
from voxbus.services.stt.normalize import normalize_text, word_errors
from voxbus.services.tts.engine import KokoroEngine, Synthesizer
from voxbus.services.tts.fake import FakeSynthesizer
from voxbus.services.tts.settings import TtsSettings
from voxbus.services.tts.stage import TtsStage

SENTENCE = "Hello there, how are you doing today?"
LONG_REPLY = (
    "Sure, I can walk you through it. First, open the settings page and choose the account tab. "
    "Then scroll down until you see the section about notifications and security. "
    "There you can change your password, turn on two factor login, and review your devices. "
    "When you are done, press save and sign out of every other session to be safe."
)
SETTINGS = TtsSettings(cache_entries=0)


class Heard(Tap):
    """What a session's subscriber got (a runtime ``Tap``): frames and error events."""

    @classmethod
    async def on(cls, bus: Bus, session: str) -> Heard:
        return await cls.on_bus(bus, REGION, f"{session}.audio.out", f"{session}.ctl.error")

    @property
    def frames(self) -> list[tuple[AudioOut, int]]:
        """Frames with their arrival (``time.monotonic`` in ns)."""
        return [(e.msg, int(e.at * 1e9)) for e in self.entries if isinstance(e.msg, AudioOut)]

    @property
    def errors(self) -> list[ErrorEvent]:
        return self.of(ErrorEvent)

    def turn(self, turn: int) -> list[AudioOut]:
        return [f for f, _ in self.frames if f.turn == turn]

    def arrivals(self, turn: int) -> list[int]:
        return [t for f, t in self.frames if f.turn == turn]

    def done(self, turn: int) -> bool:
        return any(f.last for f in self.turn(turn))


def tts_worker(bus: Bus, engine: Synthesizer, settings: TtsSettings = SETTINGS
               ) -> contextlib.AbstractAsyncContextManager[Worker]:
    return running(bus, TtsStage(settings, engine=engine))


async def listen(bus: Bus, session: str) -> Heard:
    return await Heard.on(bus, session)


def chunks_of(text: str, cuts: Sequence[int]) -> Iterator[tuple[str, int, int]]:
    """The reply as the LLM stage sends it: stripped pieces with their offsets."""
    bounds = [0, *cuts, len(text)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        piece = text[a:b]
        start = a + len(piece) - len(piece.lstrip())
        stripped = piece.strip()
        yield stripped, start, start + len(stripped)


async def send_reply(bus: Bus, session: str, turn: int, text: str, cuts: Sequence[int] = (),
                     *, end: bool = True, headers: dict[str, str] | None = None) -> None:
    for seq, (piece, start, stop) in enumerate(chunks_of(text, cuts)):
        await bus.publish(REGION, ReplyText(session=session, turn=turn, seq=seq, text=piece,
                                            char_start=start, char_end=stop,
                                            emitted_ns=time.time_ns()), headers=headers)
    if end:
        await bus.publish(REGION, ReplyEnd(session=session, turn=turn, text=text))


def check_reply_frames(frames: list[AudioOut], text: str) -> None:
    """seq contiguous from 0, 24 kHz 20 ms frames, spans tiling the reply, one final marker."""
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert all(f.sample_rate_hz == 24_000 and f.channels == 1 for f in frames)
    audio, last = frames[:-1], frames[-1]
    assert audio and all(len(f.pcm) == 960 and not f.last for f in audio)
    assert last.last and last.pcm == b"" and last.text_end == len(text)
    assert frames[0].text_start == 0
    for a, b in zip(frames, frames[1:], strict=False):
        assert b.text_start == a.text_end, "spans tile the reply"
        assert b.text_end >= b.text_start
    assert audio[-1].text_end == len(text.rstrip())


def pcm_of(frames: list[AudioOut]) -> np.ndarray:
    return np.frombuffer(b"".join(f.pcm for f in frames), dtype="<i2").astype(np.float32) / 32767


# ---- control flow, scripted engine ------------------------------------------------------------


async def test_frames_follow_the_contract(bus: Bus) -> None:
    fake = FakeSynthesizer(seconds_per_char=0.05)
    heard = await listen(bus, "s1")
    async with tts_worker(bus, fake):
        await send_reply(bus, "s1", 1, LONG_REPLY, cuts=[5, 33])
        await wait_until(lambda: heard.done(1), timeout_s=10)
    frames = heard.turn(1)
    check_reply_frames(frames, LONG_REPLY)
    texts = [c.text for c in fake.calls]
    assert texts[0] == "Sure," and len(texts) >= 4
    assert not heard.errors


async def test_nothing_to_say_is_not_an_error(bus: Bus) -> None:
    fake = FakeSynthesizer()
    heard = await listen(bus, "s1")
    text = "🙂 ... ** **"
    async with tts_worker(bus, fake):
        await send_reply(bus, "s1", 1, text, cuts=[2])
        await bus.publish(REGION, ReplyText(session="s1", turn=2, seq=0, text="", char_start=0,
                                            char_end=0))
        await bus.publish(REGION, ReplyEnd(session="s1", turn=2, text=""))
        await wait_until(lambda: heard.done(1) and heard.done(2), timeout_s=5)
    assert [(f.last, f.text_start, f.text_end, f.seq) for f in heard.turn(1)] == [
        (True, 0, len(text), 0)
    ]
    assert [(f.last, f.text_end) for f in heard.turn(2)] == [(True, 0)]
    assert not heard.errors


async def test_very_long_text_is_split(bus: Bus) -> None:
    fake = FakeSynthesizer(seconds_per_char=0.01)
    heard = await listen(bus, "s1")
    text = " ".join(f"word{i}" for i in range(900))  # 7 KB, no punctuation at all
    async with tts_worker(bus, fake, replace(SETTINGS, max_unit_chars=120, ramp=())):
        await send_reply(bus, "s1", 1, text)
        await wait_until(lambda: heard.done(1), timeout_s=20)
    check_reply_frames(heard.turn(1), text)
    assert len(fake.calls) >= 55 and max(len(c.text) for c in fake.calls) <= 120
    assert not heard.errors


async def test_interrupt_aborts_the_running_synthesis(bus: Bus) -> None:
    # The second unit takes 3 s: the interrupt must stop it, not wait for it.
    fake = FakeSynthesizer(delay_s=[0.05, 3.0, 0.05])
    heard = await listen(bus, "s1")
    async with tts_worker(bus, fake):
        await send_reply(bus, "s1", 1, LONG_REPLY, cuts=[5], end=False)
        await wait_until(lambda: heard.turn(1), timeout_s=5)
        await asyncio.sleep(0.1)  # the 3 s unit is running now
        t_interrupt = time.monotonic_ns()
        await bus.publish(REGION, Interrupt(session="s1", turn=1, at_ns=time.time_ns()))
        await send_reply(bus, "s1", 2, "Okay.")
        await wait_until(lambda: heard.done(2), timeout_s=5)
        took = (heard.arrivals(2)[0] - t_interrupt) / 1e9
        await bus.publish(REGION, ReplyEnd(session="s1", turn=1, text=LONG_REPLY))  # late
        await asyncio.sleep(0.2)
    assert max(heard.arrivals(1)) < t_interrupt + 50_000_000
    assert not any(f.last for f in heard.turn(1))
    assert took < 1.0, f"the next turn waited {took:.2f} s for the aborted synthesis"
    check_reply_frames(heard.turn(2), "Okay.")


async def test_sessions_beyond_the_limit_get_an_error(bus: Bus) -> None:
    fake = FakeSynthesizer()
    a, b, c = [await listen(bus, s) for s in ("sa", "sb", "sc")]
    settings = replace(SETTINGS, max_sessions=1, admit_timeout_s=0.2)
    async with tts_worker(bus, fake, settings):
        await send_reply(bus, "sa", 1, "Sure, one moment.", end=False)
        await wait_until(lambda: a.turn(1), timeout_s=5)
        await send_reply(bus, "sb", 1, "Hello there.", cuts=[6])
        await wait_until(lambda: b.done(1), timeout_s=5)
        assert [e.code for e in b.errors] == ["tts_busy"]
        assert [(f.last, f.pcm) for f in b.turn(1)] == [(True, b"")], "the refused reply still ends"
        await bus.publish(REGION, ReplyEnd(session="sa", turn=1, text="Sure, one moment."))
        await send_reply(bus, "sc", 1, "Hi.")
        await wait_until(lambda: a.done(1) and c.done(1), timeout_s=5)
    check_reply_frames(c.turn(1), "Hi.")


async def test_replies_that_never_end_make_room_and_expire(bus: Bus) -> None:
    """Four chunks of a reply and no end used to hold a place for two minutes, and the next
    real reply failed with ``tts_busy``. Now a reply quiet for ``evict_idle_s`` gives its place
    to one that needs it, and one quiet for ``reply_ttl_s`` is closed anyway; each gets its end
    marker, so no listener waits for the rest."""
    fake = FakeSynthesizer()
    hung, lone, real = [await listen(bus, s) for s in ("hung", "lone", "real")]
    settings = replace(SETTINGS, max_sessions=1, admit_timeout_s=2.0, evict_idle_s=0.5,
                       reply_ttl_s=3.0)
    async with tts_worker(bus, fake, settings):
        await send_reply(bus, "hung", 1, "One, two, three, four.", cuts=[4, 9, 16], end=False)
        await wait_until(lambda: hung.turn(1), timeout_s=5)
        await asyncio.sleep(0.6)
        started = time.monotonic()
        await send_reply(bus, "real", 1, "Hello there.", cuts=[6])
        await wait_until(lambda: real.done(1), timeout_s=5)
        took = time.monotonic() - started
        assert not real.errors, real.errors
        check_reply_frames(real.turn(1), "Hello there.")
        assert hung.done(1), "the evicted reply got no end marker"
        assert took < 1.5, f"the real reply waited {took:.2f} s"

        await send_reply(bus, "lone", 1, "Still there?", cuts=[6], end=False)
        await wait_until(lambda: lone.turn(1), timeout_s=5)
        # reply_ttl_s, with no one waiting for a place
        await wait_until(lambda: lone.done(1), timeout_s=6)


async def test_unknown_voice_falls_back_to_the_default(bus: Bus) -> None:
    fake = FakeSynthesizer()
    heard = await listen(bus, "s1")
    with structlog.testing.capture_logs() as logs:
        async with tts_worker(bus, fake, replace(SETTINGS, voice="zz_nobody")):
            await send_reply(bus, "s1", 1, "Hello.")
            await send_reply(bus, "s1", 2, "Hi.", headers={"Voxbus-Voice": "bf_emma"})
            await send_reply(bus, "s1", 3, "Yes.", headers={"Voxbus-Voice": "xx_gone"})
            await wait_until(lambda: heard.done(3), timeout_s=5)
    assert [c.voice for c in fake.calls] == ["af_heart", "bf_emma", "af_heart"]
    warnings = [e for e in logs if e["event"] == "unknown_voice"]
    assert [w["voice"] for w in warnings] == ["zz_nobody", "xx_gone"]
    assert all(w["log_level"] == "warning" and w["fallback"] == "af_heart" for w in warnings)
    assert not heard.errors


async def test_text_is_logged_only_under_pii(bus: Bus) -> None:
    heard = await listen(bus, "s1")
    with structlog.testing.capture_logs() as logs:
        async with tts_worker(bus, FakeSynthesizer()):
            await send_reply(bus, "s1", 1, "Secret plans, for you.")
            await wait_until(lambda: heard.done(1), timeout_s=5)
    units = [e for e in logs if e["event"] == "unit_synthesized"]
    assert units and all(e["session"] == "s1" and e["turn"] == 1 for e in units)
    for entry in logs:
        visible = {k: v for k, v in entry.items() if k != "pii"}
        assert "Secret" not in repr(visible)


@pytest.mark.fast
def test_settings_from_env() -> None:
    s = TtsSettings.from_env({"TTS_VOICE": "bf_emma", "TTS_RAMP": "40,80", "TTS_SPEED": "1.1",
                              "TTS_PROVIDERS": "CUDA", "TTS_MAX_SESSIONS": "3"})
    assert (s.voice, s.ramp, s.speed, s.providers, s.max_sessions) == (
        "bf_emma", (40, 80), 1.1, "cuda", 3)
    assert TtsSettings.from_env({}) == TtsSettings()
    assert TtsSettings.from_env({"TTS_RAMP": "none"}).ramp == ()
    with pytest.raises(ValueError):
        TtsSettings.from_env({"TTS_PROVIDERS": "tpu"})
    with pytest.raises(ValueError):
        TtsSettings.from_env({"TTS_FRAME_MS": "7"})


# ---- the real engine ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def whisper() -> WhisperEngine:
    engine = WhisperEngine(model="tiny.en", cpu_threads=2)
    engine.warmup()
    return engine


@pytest.mark.model
async def test_short_sentence_streams_speech(bus: Bus, kokoro: KokoroEngine) -> None:
    heard = await listen(bus, "s1")
    async with tts_worker(bus, kokoro):
        await send_reply(bus, "s1", 1, SENTENCE, cuts=[12])
        await wait_until(lambda: heard.done(1), timeout_s=30)
    frames = heard.turn(1)
    check_reply_frames(frames, SENTENCE)
    audio = pcm_of(frames[:-1])
    assert 2.0 <= audio.size / 24_000 <= 4.0
    assert float(np.sqrt(np.mean(audio**2))) > 0.02, "not silent"
    # The first unit ("Hello there,") is out before the rest was synthesized.
    first_unit_end = SENTENCE.index(",") + 1
    second = next(i for i, f in enumerate(frames) if f.text_end > first_unit_end)
    assert frames[0].text_end <= first_unit_end
    to_monotonic_ns = time.monotonic_ns() - time.time_ns()
    second_out = frames[second].emitted_ns + to_monotonic_ns
    assert heard.frames[0][1] < second_out - 100_000_000, "the first frame waited for the rest"


@pytest.mark.model
async def test_barge_in_stops_the_real_engine(bus: Bus, kokoro: KokoroEngine) -> None:
    heard = await listen(bus, "s1")
    async with tts_worker(bus, kokoro):
        await send_reply(bus, "s1", 1, LONG_REPLY, cuts=[5, 33], end=False)
        await wait_until(lambda: heard.turn(1), timeout_s=30)
        await asyncio.sleep(0.3)  # mid-reply: a later sentence is being synthesized
        t_interrupt = time.monotonic_ns()
        await bus.publish(REGION, Interrupt(session="s1", turn=1, at_ns=time.time_ns()))
        await send_reply(bus, "s1", 2, "Okay.")
        await wait_until(lambda: heard.done(2), timeout_s=30)
        took = (heard.arrivals(2)[0] - t_interrupt) / 1e9
        await asyncio.sleep(0.3)
    assert max(heard.arrivals(1)) < t_interrupt + 50_000_000, "a frame of turn 1 came late"
    assert not any(f.last for f in heard.turn(1))
    check_reply_frames(heard.turn(2), "Okay.")
    assert took < 2.0, f"turn 2's first audio took {took:.2f} s after the interrupt"


@pytest.mark.model
async def test_round_trip_through_whisper(
    bus: Bus, kokoro: KokoroEngine, whisper: WhisperEngine
) -> None:
    text = "The pharmacy closes at nine tonight, so please come early."
    heard = await listen(bus, "s1")
    async with tts_worker(bus, kokoro):
        await send_reply(bus, "s1", 1, text, cuts=[35])
        await wait_until(lambda: heard.done(1), timeout_s=30)
    audio_16k = resample(pcm_of(heard.turn(1)[:-1]), in_rate_hz=24_000, out_rate_hz=16_000)
    result = await asyncio.to_thread(whisper.transcribe, audio_16k)
    assert word_errors(text, result.text) <= 1, (normalize_text(text), result.text)


@pytest.mark.model
async def test_unknown_voice_falls_back_on_the_real_engine(
    bus: Bus, kokoro: KokoroEngine
) -> None:
    heard = await listen(bus, "s1")
    with structlog.testing.capture_logs() as logs:
        async with tts_worker(bus, kokoro, replace(SETTINGS, voice="zz_nobody")):
            await send_reply(bus, "s1", 1, "Good morning.")
            await wait_until(lambda: heard.done(1), timeout_s=30)
    assert any(e["event"] == "unknown_voice" for e in logs)
    audio = pcm_of(heard.turn(1)[:-1])
    assert audio.size > 0.4 * 24_000 and float(np.sqrt(np.mean(audio**2))) > 0.02
    assert not heard.errors
