"""The whole voice loop on real parts: a real livekit-server, the bridge, the real STT (Whisper
tiny.en), LLM (SmolLM2 through llama.cpp) and TTS (Kokoro; Piper too for barge-in) stages as
in-process workers on a real nats-server, and a caller in the room. Replies are prepared inside
the silence window (speculative turns, on by default) and played once the turn is committed.

(a) The caller asks a question; the answer arrives as audio in the room, and that audio, heard by
    the caller through Opus and the jitter buffers, transcribes back to the reply the LLM wrote.
(b) The caller speaks over the answer: the agent stops talking, the bridge reports how much of the
    reply was heard, and the conversation in the state bucket keeps only that much of it.
(c) Backchannels: "yeah" and a cough over the answer do not stop it (it plays on where it paused,
    each frame once, and "yeah" gets no reply); "wait, stop" does. The answer here is scripted
    (one long one, at a small model's pace): what is tested is the bridge and the LLM stage, and
    SmolLM2's answer, which changes with each transcript, sometimes ended before the cough.
"""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from tests.bridge.caller import Caller, Tap, load_wav, session_of
from tests.conftest import REGION
from tests.fixtures.make_over import OUT_DIR as OVER
from tests.stt.test_smart_turn import PAUSED, _kokoro_pause
from voxbus.audio import float32_to_pcm16, pcm16_to_float32, resample
from voxbus.contracts.messages import (
    AgentSpoke,
    AudioOut,
    EndOfTurn,
    Interrupt,
    ReplyEnd,
    ReplyText,
    SessionStarted,
    Transcript,
    TurnResumed,
    UserStartedSpeaking,
)
from voxbus.dev.livekit_server import LiveKitServer
from voxbus.dev.probes import FIRST_AUDIO_RMS
from voxbus.runtime.bus import Bus
from voxbus.runtime.worker import Worker
from voxbus.services.bridge.audio import AgentFrame
from voxbus.services.bridge.bridge import Bridge
from voxbus.services.llm.engine import LLMEngine
from voxbus.services.llm.fake import FakeLLM, FakeTurn
from voxbus.services.llm.history import HistoryStore, reply_text
from voxbus.services.llm.settings import DEFAULT_SYSTEM_PROMPT, LlmSettings
from voxbus.services.llm.stage import LlmStage, build_engine
from voxbus.services.stt.engine import WhisperEngine
from voxbus.services.stt.normalize import normalize_text, word_edit_distance
from voxbus.services.stt.settings import SttSettings
from voxbus.services.stt.stage import SttStage
from voxbus.services.tts.engine import KokoroEngine, Synthesizer
from voxbus.services.tts.settings import TtsSettings
from voxbus.services.tts.stage import TtsStage

pytestmark = [pytest.mark.livekit, pytest.mark.model]

LISTEN_RATE = 24_000
#: Opus, the jitter buffers, Kokoro and Whisper tiny.en between the two texts.
MAX_WER = 0.30
MIN_OVERLAP = 0.7
LONG_ANSWERS = (
    "You are a friendly voice assistant on a phone call. Answer in four or five full spoken "
    "sentences with plenty of detail. Never use lists, markdown, emoji, digits or symbols."
)

#: About 40 s of speech in short sentences (each a TTS unit of a second or two, so Kokoro keeps
#: ahead of the playout on two loaded cores), at a small model's pace (first token 0.3 s, then
#: 30 ms).
LONG_ANSWER = FakeTurn.words(
    "Of course, I can book that. A table for four is easy. We have one by the window. "
    "It is quiet in the evening. The kitchen is open until ten. The chef likes the fish today. "
    "It comes with roasted vegetables. There is a lemon butter sauce too. Tell me about any "
    "allergies. The kitchen will cook something safe. Parking is free at the back. The back "
    "door has a ramp. We also have high chairs. Dessert is made in the house. The apple tart "
    "is very good. Coffee comes with it. Shall I hold it for seven? Or is later better?",
    first_token_delay_s=0.3, token_delay_s=0.03)


@pytest.fixture(scope="module")
def whisper() -> Iterator[WhisperEngine]:
    engine = WhisperEngine()  # tiny.en, float32, 2 threads: the STT stage's default
    engine.warmup()
    yield engine


@pytest.fixture(scope="module")
def kokoro() -> KokoroEngine:
    engine = KokoroEngine()
    engine.warmup()
    return engine


@pytest.fixture(scope="module")
def piper() -> Synthesizer:
    from voxbus.services.tts.piper import PiperEngine

    engine = PiperEngine()
    engine.warmup()
    return engine


@dataclass
class Agent:
    bus: Bus
    bridge: Bridge
    workers: list[Worker]


async def start_agent(
    bus: Bus, bridge: Bridge, whisper: WhisperEngine, kokoro: Synthesizer, system_prompt: str,
    *, stt: SttSettings | None = None, engine: LLMEngine | None = None, tools: bool = False,
) -> Agent:
    """The three stages as workers; the LLM is SmolLM2 unless ``engine`` is given (``tools``:
    the built-in tools are offered, ``end_call`` among them)."""
    llm = LlmSettings(temperature=0.0, max_tokens=128, system_prompt=system_prompt, tools=tools)
    workers = [
        Worker(bus, SttStage(stt or SttSettings(), engine=whisper)),
        Worker(bus, LlmStage(engine or build_engine(llm), llm)),
        Worker(bus, TtsStage(TtsSettings(), engine=kokoro)),
    ]
    started: list[Worker] = []
    try:
        for w in workers:
            await w.start()
            started.append(w)
    except BaseException:
        await asyncio.gather(*(w.stop() for w in started), return_exceptions=True)
        raise
    return Agent(bus, bridge, workers)


@pytest.fixture
async def agent_factory(
    bus: Bus, bridge: Bridge, whisper: WhisperEngine, kokoro: KokoroEngine
) -> AsyncIterator[list[Agent]]:
    agents: list[Agent] = []
    yield agents
    for a in agents:
        await asyncio.gather(*(w.stop() for w in a.workers), return_exceptions=True)


async def in_room(
    livekit: LiveKitServer, bridge: Bridge, tap: Tap, room: str
) -> tuple[Caller, str]:
    """The agent and a caller with a live microphone in ``room``; the caller's session id."""
    await bridge.dispatch(room)
    caller = Caller(livekit.url, livekit.config.api_key, livekit.config.api_secret, room)
    await caller.join()
    caller.start_mic()
    sess = (await tap.wait_for(SessionStarted, session=session_of(caller))).session
    await asyncio.wait_for(caller.agent_track.wait(), 10)
    await asyncio.wait_for(caller.mic_subscribed.wait(), 10)
    await asyncio.sleep(0.3)  # the bridge's microphone pump is running
    return caller, sess


def transcribe(whisper: WhisperEngine, pcm: bytes) -> str:
    audio = resample(pcm16_to_float32(pcm), in_rate_hz=LISTEN_RATE, out_rate_hz=16_000)
    return whisper.transcribe(audio).text


def wer(reference: str, hypothesis: str) -> tuple[float, float]:
    """Word error rate and the share of reference words found in the hypothesis."""
    ref, hyp = normalize_text(reference).split(), normalize_text(hypothesis).split()
    assert ref, "empty reference"
    found = sum(1 for w in set(ref) if w in hyp) / len(set(ref))
    return word_edit_distance(ref, hyp) / len(ref), found


def speech(name: str, *, from_ms: int = 0) -> tuple[np.ndarray, int]:
    pcm, rate = load_wav(name)
    assert rate == 16_000
    return pcm[from_ms * rate // 1000:].copy(), rate


async def test_answer_arrives_as_audio_in_the_room(
    livekit: LiveKitServer, bridge: Bridge, bus: Bus, tap: Tap, whisper: WhisperEngine,
    kokoro: KokoroEngine, agent_factory: list[Agent],
) -> None:
    agent_factory.append(await start_agent(bus, bridge, whisper, kokoro, DEFAULT_SYSTEM_PROMPT))
    caller, sess = await in_room(livekit, bridge, tap, "voice-room")
    pcm, rate = speech("battery.wav")  # "My phone battery is almost empty." (ends at 2685 ms)
    spoken = await caller.say(pcm)
    speech_end = spoken.at(2.685)

    end = await tap.wait_for(ReplyEnd, session=sess, within_s=40)
    done = await tap.wait_for(AgentSpoke, session=sess, within_s=40,
                              where=lambda m: m.turn == end.turn)
    await asyncio.sleep(0.4)  # the last frames are on their way
    eot = tap.of(EndOfTurn, sess)[0]
    assert not done.interrupted and done.text == end.text and end.reason == "done"
    assert end.text.strip(), "the LLM said nothing"

    first = caller.first_frame_heard(speech_end, threshold=FIRST_AUDIO_RMS)
    assert first is not None, "no agent audio reached the caller"
    heard = caller.audio_between(first.t - 0.05)
    heard_s = len(heard) / 2 / LISTEN_RATE
    text = await asyncio.to_thread(transcribe, whisper, heard)
    error, found = wer(end.text, text)
    first_out = min(t for t, m in tap.timed(AudioOut) if m.session == sess and m.pcm)
    print(f"\nuser: {eot.transcript!r}\nreply: {end.text!r}\nheard: {text!r}"
          f"\nWER {error:.2f}, reply words heard {found:.2f}, {heard_s:.1f} s of audio; "
          f"voice to voice {1000 * (first.t - speech_end):.0f} ms "
          f"(first TTS frame on the bus {1000 * (first_out - speech_end):.0f} ms)")
    assert error <= MAX_WER, (end.text, text)
    assert found >= MIN_OVERLAP and len(normalize_text(text).split()) >= 3, (end.text, text)
    # nothing of the agent's voice before the caller finished speaking
    assert caller.voiced_after(spoken.started, until=speech_end) == 0
    await caller.leave()


@pytest.mark.parametrize("voice", ["kokoro", "piper"])
async def test_caller_barges_in_and_history_keeps_what_was_said(
    livekit: LiveKitServer, bridge: Bridge, bus: Bus, tap: Tap, whisper: WhisperEngine,
    agent_factory: list[Agent], voice: str, request: pytest.FixtureRequest,
) -> None:
    engine: Synthesizer = request.getfixturevalue(voice)
    agent_factory.append(await start_agent(bus, bridge, whisper, engine, LONG_ANSWERS))
    caller, sess = await in_room(livekit, bridge, tap, "barge-room")
    question, _ = speech("table.wav")  # "Can you book a table for four people?" (ends 2555 ms)
    spoken = await caller.say(question)
    speech_end = spoken.at(2.555)
    first = await caller.wait_voice(speech_end, 40, threshold=FIRST_AUDIO_RMS)
    assert first is not None, "the agent never answered"
    committed = tap.of(EndOfTurn, sess)[0]
    turn = committed.turn

    # Let the agent talk for a second, then speak over it ("Turn left at the next traffic
    # light.", from its onset).
    await asyncio.sleep(1.0)
    over, _ = speech("traffic.wav", from_ms=400)
    talking = asyncio.create_task(caller.say(over))
    intr = await tap.wait_for(Interrupt, session=sess, within_s=10)
    t_intr = next(t for t, m in tap.timed(Interrupt) if m.session == sess)
    spoke = await tap.wait_for(AgentSpoke, session=sess, where=lambda m: m.turn == turn)
    assert intr.turn == turn and intr.reason == "barge_in"
    assert spoke.interrupted

    # The reply as the bridge knew it: the LLM's whole text, or what it published before it
    # was cut off.
    # (of the reply the commit named: a guess voided meanwhile was never played)
    ends = [m for m in tap.of(ReplyEnd, sess)
            if m.turn == turn and m.speculation == committed.speculation]
    chunks = sorted((m for m in tap.of(ReplyText, sess)
                     if m.turn == turn and m.speculation == committed.speculation),
                    key=lambda m: m.char_start)
    reply = ends[0].text if ends else "".join(m.text for m in chunks)
    assert 0 < spoke.char_end < len(reply), (spoke.char_end, reply)  # > 0: it spoke for 1 s+
    assert spoke.text == reply[: spoke.char_end]

    # The agent's audio stops (and stays off while the caller talks).
    await asyncio.sleep(1.0)
    silent = caller.silent_since(t_intr, hold_s=0.3)
    assert silent is not None and silent - t_intr < 0.5, "the agent kept talking"
    assert caller.voiced_after(silent + 0.05, until=t_intr + 1.0) == 0

    # The conversation keeps only what the caller heard of that reply.
    store = HistoryStore(await bus.state(REGION))
    deadline = time.monotonic() + 10
    while True:
        record = (await store.load(sess)).find(turn)
        said = reply_text(record.reply) if record is not None else None
        if record is not None and record.spoken == spoke.char_end and said == reply[
            : spoke.char_end
        ]:
            break
        assert time.monotonic() < deadline, (record, reply[: spoke.char_end])
        await asyncio.sleep(0.1)
    print(f"\nreply: {reply!r}\nheard: {reply[:spoke.char_end]!r} ({spoke.char_end}/{len(reply)}"
          f" chars); voice at the caller {1000 * (first.t - speech_end):.0f} ms after the "
          f"question, audio stopped {1000 * (silent - t_intr):.0f} ms after the Interrupt")
    await talking
    await caller.leave()


async def test_a_voided_guess_is_never_heard_nor_kept(
    livekit: LiveKitServer, bridge: Bridge, bus: Bus, tap: Tap, whisper: WhisperEngine,
    kokoro: KokoroEngine, agent_factory: list[Agent],
) -> None:
    """The caller pauses 1 s mid-sentence ("I'd like a table for... four people.") inside a
    1.5 s end-of-turn silence: the words before the pause are guessed and the reply to them
    prepared, then voided when the caller goes on. The caller hears nothing before the turn is
    committed, then the reply to the whole sentence; the history holds that one turn only."""
    # the caller's words first, off the event loop: a second of Kokoro on the loop the agent's
    # workers share stalls their lease renewals past the fence, and the turn is cut by it
    audio, _ = await asyncio.to_thread(_kokoro_pause, PAUSED, 1000)
    stt = SttSettings(end_silence_ms=1500, window_s=12)
    agent_factory.append(await start_agent(bus, bridge, whisper, kokoro, DEFAULT_SYSTEM_PROMPT,
                                           stt=stt))
    caller, sess = await in_room(livekit, bridge, tap, "guess-room")
    spoken = await caller.say(np.frombuffer(float32_to_pcm16(audio), dtype="<i2"))
    end = await tap.wait_for(ReplyEnd, session=sess, within_s=40)
    done = await tap.wait_for(AgentSpoke, session=sess, within_s=40,
                              where=lambda m: m.turn == end.turn)
    (eot,) = tap.of(EndOfTurn, sess)
    guesses = [e for e in tap.of(EndOfTurn, sess, guesses=True) if e.speculative]
    resumed = tap.of(TurnResumed, sess)
    assert resumed and resumed[0].speculation == guesses[0].speculation, (guesses, resumed)
    voided = resumed[0].speculation
    # the words after the pause are in the turn ("four" often comes back "for" through Opus)
    assert "people" in normalize_text(eot.transcript), eot.transcript
    assert eot.speculation != voided and end.speculation == eot.speculation
    committed_at = next(t for t, m in tap.timed(EndOfTurn) if m == eot)
    assert caller.voiced_after(spoken.started, until=committed_at) == 0, "heard before the commit"
    assert not done.interrupted and done.text == end.text
    store = HistoryStore(await bus.state(REGION))
    turns = (await store.load(sess)).turns
    assert [(r.turn, r.user, reply_text(r.reply)) for r in turns] == [
        (eot.turn, eot.transcript, end.text)]
    prepared = "".join(m.text for m in tap.of(ReplyText, sess) if m.speculation == voided)
    print(f"\nguessed: {guesses[0].transcript!r}, reply prepared before the caller went on: "
          f"{prepared!r}\ncommitted: {eot.transcript!r} -> {end.text!r}")
    await caller.leave()


def said_over(name: str) -> np.ndarray:
    """PCM16 at 16 kHz of ``tests/fixtures/over/<name>.wav`` (``make_over``)."""
    with wave.open(str(OVER / f"{name}.wav"), "rb") as w:
        assert w.getframerate() == 16_000
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()


def cough(rate: int = 16_000) -> np.ndarray:
    """A cough: 250 ms of band-passed noise (300 Hz - 3 kHz) that bursts and fades, between
    0.3 s of silence before and 1 s after."""
    rng = np.random.default_rng(29)
    n = rate // 4
    spectrum = np.fft.rfft(rng.normal(0.0, 1.0, n))
    hz = np.fft.rfftfreq(n, 1 / rate)
    spectrum[(hz < 300) | (hz > 3000)] = 0
    burst = np.fft.irfft(spectrum, n)
    burst *= np.exp(-np.arange(n) / (0.06 * rate)) * 0.5 / np.abs(burst).max()
    audio = np.concatenate([np.zeros(rate * 3 // 10), burst, np.zeros(rate)])
    return (audio * 32767).astype("<i2")


async def test_yeah_and_a_cough_do_not_stop_the_agent_and_wait_stop_does(
    livekit: LiveKitServer, bridge: Bridge, bus: Bus, tap: Tap, whisper: WhisperEngine,
    kokoro: KokoroEngine, agent_factory: list[Agent],
) -> None:
    agent_factory.append(await start_agent(bus, bridge, whisper, kokoro, LONG_ANSWERS,
                                           engine=FakeLLM([LONG_ANSWER])))
    caller, sess = await in_room(livekit, bridge, tap, "backchannel-room")
    session = bridge.rooms["backchannel-room"].sessions[caller.identity]
    played: list[tuple[int, int]] = []  # (turn, seq) of every agent frame the caller heard
    started = session.replies.frame_started

    def frame_started(f: AgentFrame) -> None:
        played.append((f.turn, f.seq))
        started(f)

    session.replies.frame_started = frame_started  # type: ignore[method-assign]
    question, _ = speech("table.wav")  # "Can you book a table for four people?" (ends 2555 ms)
    spoken = await caller.say(question)
    first = await caller.wait_voice(spoken.at(2.555), 40, threshold=FIRST_AUDIO_RMS)
    assert first is not None, "the agent never answered"
    turn = tap.of(EndOfTurn, sess)[0].turn
    await asyncio.sleep(1.0)

    # "Yeah." over the answer: the agent keeps talking, and "yeah" gets no reply of its own
    await caller.say(said_over("yeah"))
    mhm = await tap.wait_for(EndOfTurn, session=sess, within_s=10,
                             where=lambda m: m.turn > turn)
    await asyncio.sleep(1.0)
    said = [(m.turn, m.text, m.is_final) for m in tap.of(Transcript, sess)]
    assert tap.of(Interrupt, sess) == [], f"{mhm.transcript!r} cut the agent: {said}"
    t_mhm = time.monotonic()
    # (up to 5 s: on two loaded cores the voice may wait for its next sentence to be spoken)
    assert await caller.wait_voice(t_mhm, 5.0) is not None, "the agent went quiet after yeah"
    assert not [m for m in tap.of(ReplyText, sess) if m.turn == mhm.turn], "yeah was answered"

    # A cough: no words; the agent goes on
    await caller.say(cough())
    await asyncio.sleep(1.5)  # past BRIDGE_BACKCHANNEL_RESUME_S
    assert tap.of(Interrupt, sess) == [], "a cough cut the agent"
    assert await caller.wait_voice(time.monotonic(), 5.0) is not None, (
        "quiet after the cough", tap.of(AgentSpoke, sess), tap.of(UserStartedSpeaking, sess),
        [(m.turn, m.text, m.is_final) for m in tap.of(Transcript, sess)])
    coughed = [m.turn for m in tap.of(UserStartedSpeaking, sess) if m.turn > mhm.turn]

    # "Wait, stop.": the agent stops
    talking = asyncio.create_task(caller.say(said_over("wait_stop")))
    intr = await tap.wait_for(Interrupt, session=sess, within_s=10)
    t_intr = next(t for t, m in tap.timed(Interrupt) if m.session == sess)
    spoke = await tap.wait_for(AgentSpoke, session=sess, where=lambda m: m.turn == turn)
    assert intr.turn >= turn and intr.reason == "barge_in" and spoke.interrupted
    await talking
    # judged on what the caller heard up to 1 s after the cut (under load, the cut can come from
    # the final, after the caller's last word: the check must not run before that audio arrived)
    await asyncio.sleep(max(0.0, t_intr + 1.0 - time.monotonic()))
    silent = caller.silent_since(t_intr, hold_s=0.3)
    assert silent is not None and silent - t_intr < 0.5, "the agent kept talking"

    # every frame of the answer the caller heard, once and in order, none skipped
    seqs = [seq for t, seq in played if t == turn]
    assert seqs == list(range(len(seqs))), "a frame was repeated or lost over the pauses"
    print(f"\nyeah heard as {mhm.transcript!r} (turn {mhm.turn}, no reply); cough turns "
          f"{coughed}; reply cut at {spoke.char_end} chars, {len(seqs)} frames heard once each")
    await caller.leave()
