"""Smart Turn v3.2 deciding where a turn ends: the detector's rule with a scripted judge, the model
on speech, and the STT stage on a real nats-server keeping one turn for a user who pauses
600 ms mid-sentence (two turns with the plain 300 ms silence rule)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.stt.test_stage import Feed, finals, running
from voxbus.audio import Float32Array, float32_to_pcm16, resample
from voxbus.contracts.messages import EndOfTurn
from voxbus.runtime.bus import Bus
from voxbus.services.stt.engine import WhisperEngine
from voxbus.services.stt.settings import SttSettings
from voxbus.services.stt.smart_turn import SmartTurn, check_model
from voxbus.services.stt.stage import SttStage
from voxbus.services.stt.turns import EndOfTurn as TurnEnded
from voxbus.services.stt.turns import TurnConfig, TurnDetector

RATE = 16_000
WINDOW = 512  # the VAD's window, in samples


def _run(detector: TurnDetector, probs: list[float]) -> list[object]:
    events: list[object] = []
    for p in probs:
        events += detector.push(p, WINDOW)
    return events


def _ends(events: list[object]) -> list[int]:
    return [e.at_sample for e in events if isinstance(e, TurnEnded)]


@pytest.mark.fast
@pytest.mark.parametrize("complete", [True, False])
def test_the_turn_ends_at_the_model_s_silence_or_waits_for_the_longer_one(
    complete: bool,
) -> None:
    asked: list[tuple[int, int]] = []

    def judge(start: int, end: int) -> bool:
        asked.append((start, end))
        return complete

    cfg = TurnConfig(model_silence_ms=200, incomplete_silence_ms=1000, end_silence_ms=300)
    det = TurnDetector(cfg, judge)
    speech = [0.9] * 30  # ~1 s
    events = _run(det, speech + [0.0] * 40)  # then 1.28 s of silence
    (end,) = _ends(events)
    silence = end - len(speech) * WINDOW
    expected_ms = 200 if complete else 1000
    assert expected_ms <= silence * 1000 / RATE < expected_ms + 33, silence
    # asked once, on the utterance and the 100 ms after its last speech window (model_tail_ms)
    assert asked == [(0, len(speech) * WINDOW + cfg.model_tail_ms * RATE // 1000)]


@pytest.mark.fast
def test_a_pause_judged_incomplete_then_more_speech_is_one_turn() -> None:
    verdicts = iter([False, True])
    det = TurnDetector(TurnConfig(), lambda s, e: next(verdicts))
    events = _run(det, [0.9] * 30 + [0.0] * 19 + [0.9] * 30 + [0.0] * 20)  # a 0.6 s pause
    assert len(_ends(events)) == 1


@pytest.mark.fast
def test_without_a_model_the_plain_silence_rule_holds() -> None:
    det = TurnDetector(TurnConfig(end_silence_ms=300))
    events = _run(det, [0.9] * 30 + [0.0] * 19 + [0.9] * 30 + [0.0] * 20)
    assert len(_ends(events)) == 2  # the 0.6 s pause ended the first


# ---- the model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smart() -> SmartTurn:
    check_model()  # ./dev setup put it there
    return SmartTurn()


def _kokoro_pause(text: str, pause_ms: int) -> tuple[Float32Array, int]:
    """``text`` spoken by Kokoro (af_heart) at 16 kHz with its longest inner pause (at the
    "...") stretched to ``pause_ms``: a user who stops to think mid-sentence, with the
    prosody of a sentence that goes on. Returns the audio and where the pause starts."""
    from voxbus.services.tts.engine import KokoroEngine

    a = resample(KokoroEngine(voices=["af_heart"]).synthesize(text), in_rate_hz=24_000,
                 out_rate_hz=RATE)
    frame = 160
    n = a.size // frame
    rms = np.sqrt(np.mean(a[: n * frame].reshape(n, frame) ** 2, axis=1))
    quiet = rms < rms.max() * 0.02
    runs, i = [], 0
    while i < n:
        j = i
        while j < n and quiet[j] == quiet[i]:
            j += 1
        if quiet[i] and i > 10 and j < n - 10:
            runs.append((i, j))
        i = j
    start, end = max(runs, key=lambda r: r[1] - r[0])
    lead, tail = np.zeros(RATE // 2, np.float32), np.zeros(RATE, np.float32)
    out = np.concatenate([lead, a[: start * frame], np.zeros(RATE * pause_ms // 1000, np.float32),
                          a[end * frame:], tail])
    return out.astype(np.float32), lead.size + start * frame


PAUSED = "I'd like a table for... four people."


@pytest.mark.model
def test_smart_turn_hears_a_sentence_end_and_a_pause_mid_sentence(smart: SmartTurn) -> None:
    audio, pause_at = _kokoro_pause(PAUSED, 600)
    mid = audio[: pause_at + RATE // 5]  # 200 ms into the pause
    assert smart.complete_probability(mid) < 0.5
    end = audio[: audio.size - RATE + RATE // 5]  # 200 ms after the last word
    assert smart.complete_probability(end) > 0.5


@pytest.mark.model
@pytest.mark.parametrize(("turn_model", "turns"), [("smart-turn", 1), ("silence", 2)])
async def test_a_user_who_pauses_600_ms_mid_sentence_keeps_the_turn(
    bus: Bus, whisper: WhisperEngine, turn_model: str, turns: int
) -> None:
    audio, _ = _kokoro_pause(PAUSED, 600)
    settings = SttSettings(turn_model=turn_model, partials=False)  # type: ignore[arg-type]
    stage = SttStage(settings, engine=whisper)
    session = f"pause-{turn_model}"
    async with running(bus, stage) as tap:
        await Feed.on(bus, session, speed=1.0).play(float32_to_pcm16(audio))
        await asyncio.sleep(1.5)
        ends = tap.of(EndOfTurn, session)
        texts = [t.text for t in finals(tap, session)]
    assert len(ends) == turns, texts
    if turn_model == "smart-turn":  # one utterance: Whisper has the context ("For people"
        assert "four people" in " ".join(texts).lower().replace("4", "four"), texts  # alone)
        assert stage.stats.turns_judged >= 2  # the pause, then the end
