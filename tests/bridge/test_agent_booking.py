"""An agent books a table by voice, on real parts: a caller in a real LiveKit room talks to the
frontdesk agent (examples/frontdesk) through the bridge and the real STT (Whisper tiny.en), LLM
(Qwen2.5-Coder-1.5B through llama.cpp: a model that calls tools) and TTS (Kokoro) stages, with the
module's tools in a tools stage worker, all on a real nats-server. The tools worker receives the
calls with the caller's words as arguments, the booking is a row in the example's SQLite file,
and what the caller hears back, transcribed by Whisper, confirms it."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from tests.bridge.caller import Caller, Tap, session_of
from tests.bridge.test_voice_loop import LISTEN_RATE, transcribe, whisper  # noqa: F401
from tests.conftest import REGION
from voxbus.agents.loader import load
from voxbus.agents.registry import AgentRegistry
from voxbus.audio import read_wav
from voxbus.contracts.messages import EndOfTurn, ReplyEnd, SessionStarted, ToolCall
from voxbus.contracts.streams import agents_bucket
from voxbus.dev.livekit_server import LiveKitServer
from voxbus.dev.probes import FIRST_AUDIO_RMS
from voxbus.runtime.bus import Bus
from voxbus.runtime.testing import running
from voxbus.services.bridge.bridge import Bridge
from voxbus.services.llm.settings import LlmSettings
from voxbus.services.llm.stage import LlmStage, build_engine
from voxbus.services.stt.engine import WhisperEngine
from voxbus.services.stt.normalize import word_edit_distance
from voxbus.services.stt.settings import SttSettings
from voxbus.services.stt.stage import SttStage
from voxbus.services.tools.stage import ToolsStage
from voxbus.services.tts.engine import KokoroEngine
from voxbus.services.tts.settings import TtsSettings
from voxbus.services.tts.stage import TtsStage

pytestmark = [pytest.mark.livekit, pytest.mark.model]

REPO = Path(__file__).resolve().parents[2]
MODULE = str(REPO / "examples" / "frontdesk" / "agent.py")
#: "I would like to book a table for two on Friday at seven, under the name Rossi." (espeak-ng)
BOOKING = REPO / "voxbus" / "dev" / "data" / "booking.wav"
#: "Great, please reserve that table for me." (espeak-ng)
CONFIRM = REPO / "tests" / "fixtures" / "agent" / "confirm.wav"
#: A first reply reads the agent's instructions and tools (about a thousand tokens) on 2 cores.
REPLY_WITHIN_S = 240.0


def wav_pcm(path: Path) -> tuple[np.ndarray, int]:
    wav = read_wav(path)
    return np.frombuffer(wav.pcm, dtype="<i2"), wav.sample_rate_hz


def bookings(db: Path) -> list[tuple[str, int]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as c:
        try:
            return list(c.execute(
                "SELECT name, people FROM bookings WHERE cancelled_by IS NULL"))
        except sqlite3.OperationalError:
            return []


async def test_a_caller_books_a_table_by_voice(
    livekit: LiveKitServer, bridge: Bridge, bus: Bus, tap: Tap,
    whisper: WhisperEngine,  # noqa: F811 - the module-scoped fixture
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = tmp_path / "frontdesk.sqlite3"
    monkeypatch.setenv("FRONTDESK_DB", str(db))
    module = load(MODULE)
    await AgentRegistry(await bus.kv(agents_bucket(REGION))).publish(
        [a.definition(MODULE) for a in module.agents.values()])
    llm = LlmSettings(model_name="qwen-1.5b", n_threads=2, engines=1, timeout_s=REPLY_WITHIN_S)
    kokoro = KokoroEngine()
    async with running(bus, SttStage(SttSettings(), engine=whisper)), \
            running(bus, LlmStage(build_engine(llm), llm)), \
            running(bus, TtsStage(TtsSettings(), engine=kokoro)), \
            running(bus, ToolsStage(module.tools, replica="tools-1")):
        await bridge.dispatch("booking-room", agent="frontdesk")
        caller = Caller(livekit.url, livekit.config.api_key, livekit.config.api_secret,
                        "booking-room")
        await caller.join()
        caller.start_mic()
        started = await tap.wait_for(SessionStarted, session=session_of(caller))
        sess = started.session
        assert started.agent == "frontdesk"
        await asyncio.wait_for(caller.agent_track.wait(), 10)
        await asyncio.wait_for(caller.mic_subscribed.wait(), 10)
        await asyncio.sleep(0.3)

        ends: list[ReplyEnd] = []
        for wav, end_s in ((BOOKING, 5.289), (CONFIRM, 3.094)):
            pcm, _ = wav_pcm(wav)
            spoken = await caller.say(pcm)
            speech_end = spoken.at(end_s)
            last = max((e.turn for e in ends), default=0)

            def newer(m: ReplyEnd, last: int = last) -> bool:
                return m.turn > last and bool(m.text.strip())

            ends.append(await tap.wait_for(ReplyEnd, session=sess, within_s=REPLY_WITHIN_S,
                                           where=newer))
            await asyncio.sleep(2.0)  # the reply's last frames reach the caller
            if bookings(db):
                break
        calls = list(tap.of(ToolCall, sess))
        print("\n" + "\n".join(f"{c.tool}({c.arguments})" for c in calls))
        print("replies:", [e.text for e in ends])
        # One booking, for two, under the name the agent heard. Whisper tiny.en hears "Rossi"
        # as "Rasi" on a loaded machine now and then (twice in the fresh-clone runs): what is
        # tested here is the tool call, so the name is the transcript's, close to "Rossi".
        booked_rows = bookings(db)
        assert len(booked_rows) == 1 and booked_rows[0][1] == 2, (calls, [e.text for e in ends])
        name = booked_rows[0][0]
        heard_words = " ".join(m.transcript for m in tap.of(EndOfTurn, sess)).lower()
        assert name.lower() in heard_words, (name, heard_words)
        assert word_edit_distance(list("rossi"), list(name.lower())) <= 2, name
        booked = next(c for c in calls if c.tool == "book_table")
        args = json.loads(booked.arguments)
        assert args["name"] == name and int(args["people"]) == 2
        assert "friday" in str(args["day"]).lower()
        final = ends[-1]
        assert [t.name for t in final.tools if t.name == "book_table"]
        assert final.agent == "frontdesk"

        first = caller.first_frame_heard(speech_end, threshold=FIRST_AUDIO_RMS)
        assert first is not None, "no agent audio reached the caller"
        heard = await asyncio.to_thread(transcribe, whisper, caller.audio_between(first.t - 0.05))
        print(f"reply: {final.text!r}\nheard: {heard!r}")
        assert any(w in heard.lower() for w in ("rossi", "book", "reserv", "confirm")), heard
        await caller.leave()
    assert LISTEN_RATE  # (imported with transcribe)
