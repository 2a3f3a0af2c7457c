"""The STT stage on a real nats-server: AudioIn frames in; speech events and transcripts out.

Whisper tests (``model``) share the session's warmed-up tiny.en engine for finals
(tests/stt/conftest.py) and this module's second one for partials, built at low priority as the
stage builds it. Control-flow tests use the real Silero VAD with scripted, sleeping
FakeTranscribers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pytest

from tests.conftest import REGION
from tests.stt.conftest import FIXTURES, SpeechFixture, fixture_named
from voxbus.audio import float32_to_pcm16, read_wav, resample
from voxbus.contracts.messages import (
    AnyMessage,
    AudioIn,
    EndOfTurn,
    ErrorEvent,
    Transcript,
    UserStartedSpeaking,
    UserStoppedSpeaking,
    ends_turn,
)
from voxbus.runtime import testing
from voxbus.runtime.bus import Bus
from voxbus.runtime.testing import StageRunner, Tap
from voxbus.services.stt.engine import FakeTranscriber, ScriptedReply, WhisperEngine
from voxbus.services.stt.frontend import Timeline
from voxbus.services.stt.normalize import normalize_text, word_errors
from voxbus.services.stt.settings import SttSettings
from voxbus.services.stt.stage import SttStage
from voxbus.services.stt.turn_state import state_key

M = TypeVar("M", bound=AnyMessage)
FRAME_MS = 20
TOLERANCE_NS = 150_000_000
T0_NS = 1_700_000_000_000_000_000  # the audio timeline of every test starts here


@pytest.fixture(scope="module")
def partial_whisper() -> Iterator[WhisperEngine]:
    """A second tiny.en for partials. The stage builds its own at nice 19 (``partial_nice``);
    this one runs at normal priority, because on a busy shared test machine a nice-19 engine
    starves and partials would come too late to be published."""
    engine = WhisperEngine()
    engine.warmup()
    yield engine


@pytest.fixture
def stage(whisper: WhisperEngine, partial_whisper: WhisperEngine) -> SttStage:
    """A fresh stage on the shared Whisper engines."""
    return SttStage(engine=whisper, partial_engine=partial_whisper)


@asynccontextmanager
async def running(bus: Bus, stage: SttStage) -> AsyncIterator[Tap]:
    """The stage as a real worker; the tap holds what it publishes (transcripts, control)."""
    tap = await Tap.on_bus(bus, REGION, "*.stt.transcript", "*.ctl.>")
    try:
        async with testing.running(bus, stage):
            yield tap
    finally:
        await tap.close()


@dataclass
class Feed:
    """A session's audio stream: 20 ms frames on one audio timeline, sent by ``send`` (a real
    bus's publish or a ``StageRunner``'s)."""

    send: Callable[[AudioIn], Awaitable[None]]
    session: str
    speed: float = 2.0  # times real time; 0: as fast as they are taken
    seq: int = 0
    position_ns: int = T0_NS

    @classmethod
    def on(cls, bus: Bus, session: str, speed: float = 2.0, region: str = REGION) -> Feed:
        async def send(msg: AudioIn) -> None:
            await bus.publish(region, msg)

        return cls(send, session, speed)

    async def play(self, pcm: bytes, *, rate_hz: int = 16_000, channels: int = 1) -> int:
        """Stream ``pcm``; return the audio-timeline time it started at."""
        started_ns = self.position_ns
        frame_bytes = rate_hz * FRAME_MS // 1000 * 2 * channels
        wall = time.monotonic()
        for i, off in enumerate(range(0, len(pcm), frame_bytes)):
            chunk = pcm[off : off + frame_bytes]
            await self.frame(chunk, rate_hz=rate_hz, channels=channels)
            self.position_ns += len(chunk) // (2 * channels) * 1_000_000_000 // rate_hz
            if self.speed:
                delay = wall + (i + 1) * FRAME_MS / 1000 / self.speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        return started_ns

    async def frame(self, pcm: bytes, *, rate_hz: int = 16_000, channels: int = 1) -> None:
        await self.send(AudioIn(
            session=self.session, seq=self.seq, sample_rate_hz=rate_hz, channels=channels,
            capture_ns=self.position_ns, pcm=pcm,
        ))
        self.seq += 1


def memory_feed(runner: StageRunner, session: str, speed: float = 0) -> Feed:
    async def send(msg: AudioIn) -> None:
        await runner.send(msg)

    return Feed(send, session, speed)


def pcm_of(fx: SpeechFixture) -> bytes:
    return read_wav(fx.path).pcm


def stereo_48k(fx: SpeechFixture) -> bytes:
    left = resample(fx.audio(), in_rate_hz=16_000, out_rate_hz=48_000)
    return float32_to_pcm16(np.stack([left, 0.8 * left], axis=1))


def finals(tap: Tap, session: str) -> list[Transcript]:
    return [t for t in tap.of(Transcript, session) if t.is_final]


def check_turn(tap: Tap, session: str, turn: int, fx: SpeechFixture, started_ns: int) -> None:
    """The turn's final matches the fixture; its times match the fixture's truth; its partials
    came before its final."""
    true_start = started_ns + fx.speech_start_ms * 1_000_000
    true_end = started_ns + fx.speech_end_ms * 1_000_000
    (eot,) = [e for e in tap.of(EndOfTurn, session) if e.turn == turn]
    assert word_errors(fx.text, eot.transcript) <= 1, (fx.name, eot.transcript)
    assert abs(eot.speech_start_ns - true_start) <= TOLERANCE_NS, (fx.name, "start")
    assert abs(eot.speech_end_ns - true_end) <= TOLERANCE_NS, (fx.name, "end")
    (uss,) = [e for e in tap.of(UserStartedSpeaking, session) if e.turn == turn]
    assert abs(uss.at_ns - true_start) <= TOLERANCE_NS, (fx.name, "started speaking")
    (stopped,) = [e for e in tap.of(UserStoppedSpeaking, session) if e.turn == turn]
    assert stopped.at_ns == eot.speech_end_ns
    (final,) = [t for t in finals(tap, session) if t.turn == turn]
    assert final.text == eot.transcript and final.decode_ms > 0
    assert (final.speech_start_ns, final.speech_end_ns) == (eot.speech_start_ns, eot.speech_end_ns)
    final_at = tap.arrival(lambda m: m is final)
    for p in [t for t in tap.of(Transcript, session) if t.turn == turn and not t.is_final]:
        assert tap.arrival(lambda m, p=p: m is p) < final_at  # type: ignore[misc]
        assert p.seq < final.seq and p.speech_start_ns == final.speech_start_ns


# ---- with Whisper tiny.en -----------------------------------------------------------------------


@pytest.mark.model
async def test_a_conversation_of_six_utterances(bus: Bus, stage: SttStage) -> None:
    """Every fixture, one after the other in one session: one turn each, numbered from 1; any
    partials before their final."""
    async with running(bus, stage) as tap:
        feed = Feed.on(bus, "talk")
        starts = [await feed.play(pcm_of(fx)) for fx in FIXTURES]
        await tap.until(lambda t: len(t.of(EndOfTurn, "talk")) == len(FIXTURES))
    assert [e.turn for e in tap.of(EndOfTurn, "talk")] == list(range(1, len(FIXTURES) + 1))
    for turn, (fx, started) in enumerate(zip(FIXTURES, starts, strict=True), start=1):
        check_turn(tap, "talk", turn, fx, started)
    assert not tap.of(ErrorEvent)


@pytest.mark.model
async def test_partials_come_before_the_final(bus: Bus, stage: SttStage) -> None:
    """In real time, partials of the utterance so far arrive (about every 400 ms of speech, when
    no other decode runs), each before the final."""
    fx = fixture_named("traffic")
    async with running(bus, stage) as tap:
        started = await Feed.on(bus, "live", speed=1.0).play(pcm_of(fx))
        await tap.until(lambda t: len(t.of(EndOfTurn, "live")) == 1)
    partials = [t for t in tap.of(Transcript, "live") if not t.is_final]
    assert partials, "no partial transcript"
    assert [p.seq for p in partials] == list(range(len(partials)))
    assert normalize_text(partials[0].text).split()[0] == "turn"
    check_turn(tap, "live", 1, fx, started)  # ... and every partial arrived before the final


@pytest.mark.model
async def test_two_sessions_at_once_never_mix_words(bus: Bus, stage: SttStage) -> None:
    a, b = fixture_named("traffic"), fixture_named("museum")
    async with running(bus, stage) as tap:
        starts = await asyncio.gather(
            Feed.on(bus, "alice").play(pcm_of(a)), Feed.on(bus, "bob").play(pcm_of(b))
        )
        await tap.until(lambda t: len(t.of(EndOfTurn)) == 2)
    check_turn(tap, "alice", 1, a, starts[0])
    check_turn(tap, "bob", 1, b, starts[1])
    only_a = set(normalize_text(a.text).split()) - set(normalize_text(b.text).split())
    only_b = set(normalize_text(b.text).split()) - set(normalize_text(a.text).split())
    for session, foreign in (("alice", only_b), ("bob", only_a)):
        for t in tap.of(Transcript, session):
            assert not set(normalize_text(t.text).split()) & foreign, (session, t.text)


@pytest.mark.model
async def test_48k_stereo_and_a_format_change_mid_session(
    bus: Bus, stage: SttStage
) -> None:
    """16 kHz mono, then 48 kHz stereo in the same session: the converter restarts and the
    audio timeline goes on."""
    first, second = fixture_named("museum"), fixture_named("jacket")
    async with running(bus, stage) as tap:
        feed = Feed.on(bus, "hifi")
        s1 = await feed.play(pcm_of(first))
        s2 = await feed.play(stereo_48k(second), rate_hz=48_000, channels=2)
        await tap.until(lambda t: len(t.of(EndOfTurn, "hifi")) == 2)
    check_turn(tap, "hifi", 1, first, s1)
    check_turn(tap, "hifi", 2, second, s2)


@pytest.mark.model
async def test_bad_pcm_is_an_error_event_and_the_session_goes_on(
    bus: Bus, stage: SttStage
) -> None:
    fx = fixture_named("battery")
    async with running(bus, stage) as tap:
        feed = Feed.on(bus, "glitch")
        await feed.frame(b"\x00" * 641)  # odd length: not PCM16
        await feed.frame(b"\x00" * 1280, channels=2)
        await feed.frame(b"\x00" * 962, channels=2)  # not a whole number of stereo frames
        started = await feed.play(pcm_of(fx))
        await tap.until(lambda t: len(t.of(EndOfTurn, "glitch")) == 1)
    errors = tap.of(ErrorEvent, "glitch")
    assert [(e.code, e.stage) for e in errors] == [("bad_pcm", "stt")] * 2
    assert all(e.subject.endswith("glitch.audio.in") for e in errors)
    check_turn(tap, "glitch", 1, fx, started)


# ---- control flow with a scripted engine --------------------------------------------------------


def slow_engine(decode_s: float, text: str = "hello there") -> FakeTranscriber:
    return FakeTranscriber(replies=[ScriptedReply(text=text, decode_s=decode_s)], sleep=True)


async def test_a_running_partial_never_holds_up_the_final() -> None:
    """Partials take 3 s on their own engine; finals 0.1 s: the final is out as soon as the turn
    ends, without waiting for the partial (a shared engine would hold it up for seconds)."""
    stage = SttStage(engine=slow_engine(0.1, "done"), partial_engine=slow_engine(3.0, "part"))
    async with StageRunner(stage, region=REGION) as runner:
        await memory_feed(runner, "eager", speed=4.0).play(pcm_of(fixture_named("meeting")))
        await runner.tap.until(lambda t: len(t.of(EndOfTurn, "eager")) == 1)
        tap = runner.tap
    stopped = tap.arrival(lambda m: isinstance(m, UserStoppedSpeaking))
    final = tap.arrival(lambda m: isinstance(m, Transcript) and m.is_final)
    assert final - stopped < 1.0
    assert [t.text for t in tap.of(Transcript)] == ["done"]  # the late partial was dropped
    assert stage.stats.partials_skipped > 0 and stage.stats.partials_published == 0


async def test_speech_start_never_waits_behind_a_decode() -> None:
    """Decodes take 1 s: the second utterance's UserStartedSpeaking is out long before the first
    utterance's final; partials due while a decode runs are skipped, not queued."""
    engine = slow_engine(1.0)
    stage = SttStage(engine=engine)
    async with StageRunner(stage, region=REGION) as runner:
        feed = memory_feed(runner, "quick", speed=4.0)
        await feed.play(pcm_of(fixture_named("museum")))
        await feed.play(pcm_of(fixture_named("jacket")))
        await runner.tap.until(lambda t: len(t.of(EndOfTurn, "quick")) == 2)
        tap = runner.tap
    started_2 = tap.arrival(lambda m: isinstance(m, UserStartedSpeaking) and m.turn == 2)
    final_1 = tap.arrival(lambda m: isinstance(m, Transcript) and m.is_final and m.turn == 1)
    assert started_2 < final_1
    assert [e.transcript for e in tap.of(EndOfTurn)] == ["hello there"] * 2
    assert stage.stats.partials_skipped > 0
    assert sum(1 for _, partial in engine.calls if not partial) >= 2


async def test_turn_numbers_survive_a_failover(bus: Bus) -> None:
    """The last turn lives in the state bucket: a fresh worker goes on from it (a real server:
    the worker reads and writes a real KV bucket)."""
    kv = await bus.state(REGION)
    await kv.put(state_key("phoenix"), json.dumps({"turn": 7}).encode())
    pcm = pcm_of(fixture_named("table"))
    feed = Feed.on(bus, "phoenix", speed=0)
    async with running(bus, SttStage(engine=FakeTranscriber(default_text="one"))) as tap:
        await feed.play(pcm)
        await tap.until(lambda t: len(t.of(EndOfTurn, "phoenix")) == 1)
    assert [e.turn for e in tap.of(UserStartedSpeaking, "phoenix")] == [8]
    async with running(bus, SttStage(engine=FakeTranscriber(default_text="two"))) as tap2:
        await feed.play(pcm)
        await tap2.until(lambda t: len(t.of(EndOfTurn, "phoenix")) == 1)
    assert [(e.turn, e.transcript) for e in tap2.of(EndOfTurn, "phoenix")] == [(9, "two")]
    state = json.loads((await kv.get(state_key("phoenix"))).value or b"")
    assert state["turn"] == 9
    assert [turn for turn, _frame in state["starts"]] == [8, 9]  # where each turn's speech began


async def test_a_turn_of_noise_is_closed_with_an_empty_transcript() -> None:
    async with StageRunner(SttStage(engine=FakeTranscriber(default_text="")),
                           region=REGION) as runner:
        await memory_feed(runner, "hum").play(pcm_of(fixture_named("museum")))
        await runner.tap.until(lambda t: len(t.of(EndOfTurn, "hum")) == 1)
        tap = runner.tap
    kinds = [(type(m).__name__, m.turn) for _, m in tap.got]
    assert kinds == [("UserStartedSpeaking", 1), ("UserStoppedSpeaking", 1), ("Transcript", 1),
                     ("EndOfTurn", 1)]
    assert tap.of(EndOfTurn)[0].transcript == "" and tap.of(Transcript)[0].is_final


async def test_extra_sessions_wait_and_idle_sessions_are_closed() -> None:
    """max_sessions=1: the second session waits until the first one idles out, then runs; its
    frames wait with "JetStream" meanwhile and arrive complete and in order."""
    settings = SttSettings(max_sessions=1, session_idle_s=0.4)
    stage = SttStage(settings, engine=FakeTranscriber(default_text="fine"))
    pcm = pcm_of(fixture_named("traffic"))
    held: list[int] = []
    async with StageRunner(stage, region=REGION) as runner:

        async def watch() -> None:
            while True:
                held.append(runner.lanes.admission.taken)
                await asyncio.sleep(0.01)

        async with asyncio.TaskGroup() as tg:
            watcher = tg.create_task(watch())
            await asyncio.gather(memory_feed(runner, "first", speed=8).play(pcm),
                                 memory_feed(runner, "second", speed=8).play(pcm))
            await runner.tap.until(lambda t: len(t.of(EndOfTurn)) == 2)
            watcher.cancel()
        tap = runner.tap
    order = [m.session for _, m in tap.got if ends_turn(m)]
    later = order[1]
    first_final = tap.arrival(ends_turn)
    assert tap.arrival(lambda m: isinstance(m, UserStartedSpeaking) and m.session == later) > (
        first_final
    )
    assert max(held) == 1
    assert runner.stats.deferred > 0 and runner.stats.refused == 0
    assert stage.stats.sessions_opened == 2 and stage.stats.sessions_closed >= 1
    assert [e.transcript for e in tap.of(EndOfTurn)] == ["fine", "fine"]
    assert [(e.turn, e.session) for e in tap.of(EndOfTurn, later)] == [(1, later)]


# ---- units --------------------------------------------------------------------------------------


@pytest.mark.fast
def test_timeline_maps_samples_to_capture_times() -> None:
    tl = Timeline()
    tl.mark(0, 1_000)
    tl.mark(320, 30_000_000)  # a 10 ms gap in capture times after the first frame
    assert tl.ns_at(0) == 1_000 and tl.ns_at(160) == 1_000 + 10_000_000
    assert tl.ns_at(480) == 40_000_000
    assert tl.ns_at(-16) == 1_000 - 1_000_000


@pytest.mark.fast
def test_settings_from_env() -> None:
    s = SttSettings.from_env({"STT_MODEL": "base", "STT_END_SILENCE_MS": "250",
                              "STT_PARTIALS": "off", "STT_MAX_SESSIONS": "3"})
    assert (s.model, s.end_silence_ms, s.partials, s.max_sessions) == ("base", 250, False, 3)
    assert s.cpu_threads == 2 and s.turn_config().end_silence_ms == 250
    with pytest.raises(ValueError):
        SttSettings.from_env({"STT_END_SILENCE_MS": "0"})
    with pytest.raises(ValueError):
        SttSettings.from_env({"STT_DEVICE": "tpu"})
    assert SttSettings.from_env({"STT_DENOISE": " DTLN "}).denoise == "dtln"
    with pytest.raises(ValueError, match="STT_DENOISE must be one of off, dtln"):
        SttSettings.from_env({"STT_DENOISE": "krisp"})
    with pytest.raises(ValueError, match="STT_FOREGROUND_DB must be >= 0"):
        SttSettings.from_env({"STT_FOREGROUND_DB": "-3"})



async def test_a_long_turn_closes_though_its_frames_are_held(bus: Bus) -> None:
    """The STT holds a turn's frames unacked until the turn is published: speech without a pause
    up to the longest turn (30 s, then a forced final) is 1500 frames held at once, and
    JetStream must go on delivering them (the consumer's max_ack_pending leaves room), or the
    frames that close the turn would never come."""
    speech = b"".join(
        pcm_of(f)[f.speech_start_ms * 32: f.speech_end_ms * 32] for f in FIXTURES) * 3
    assert len(speech) > 32 * 32_000
    feed = Feed.on(bus, "monologue", speed=0)
    async with running(bus, SttStage(engine=FakeTranscriber(default_text="long"))) as tap:
        await feed.play(speech)
        await feed.play(b"\0\0" * 16_000 * 2)
        await tap.until(lambda t: len(t.of(EndOfTurn, "monologue")) >= 1, timeout_s=60)
