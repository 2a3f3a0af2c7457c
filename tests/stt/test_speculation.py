"""Speculative turns from the STT stage (real Whisper tiny.en, real nats-server): when the user
falls silent, the words so far go out as a speculative ``EndOfTurn`` so a reply can be prepared;
a user who goes on voids it (``TurnResumed``), and the committed ``EndOfTurn`` names the guess
whose words it commits."""

from __future__ import annotations

import pytest

from tests.stt.test_smart_turn import PAUSED, _kokoro_pause
from tests.stt.test_stage import Feed, running
from voxbus.audio import float32_to_pcm16
from voxbus.contracts.messages import EndOfTurn, TurnResumed
from voxbus.runtime.bus import Bus
from voxbus.services.stt.engine import WhisperEngine
from voxbus.services.stt.normalize import normalize_text
from voxbus.services.stt.settings import SttSettings
from voxbus.services.stt.stage import SttStage

pytestmark = pytest.mark.model


@pytest.mark.parametrize("replies", [True, False])
async def test_a_pause_is_guessed_voided_and_the_end_committed(
    bus: Bus, whisper: WhisperEngine, replies: bool
) -> None:
    """A 1 s pause mid-sentence inside a 1.5 s end-of-turn silence: guess 1 (the words before
    the pause) goes out and is voided when the user goes on; the sentence's end is guessed
    again, and that guess is what the turn commits."""
    audio, _ = _kokoro_pause(PAUSED, 1000)
    settings = SttSettings(end_silence_ms=1500, window_s=12, partials=False,
                           speculative_replies=replies)
    stage = SttStage(settings, engine=whisper)
    session = f"guess-{replies}"
    async with running(bus, stage) as tap:
        feed = Feed.on(bus, session, speed=1.0)
        await feed.play(float32_to_pcm16(audio))
        await feed.play(b"\0\0" * 16_000)  # the line stays open: 1 s more of silence
        await tap.until(lambda t: len(t.of(EndOfTurn, session)) == 1, timeout_s=20)
        (end,) = tap.of(EndOfTurn, session)
        guesses = [e for e in tap.of(EndOfTurn, session, guesses=True) if e.speculative]
        resumed = tap.of(TurnResumed, session)
    assert "four people" in normalize_text(end.transcript).replace("4", "four"), end.transcript
    if not replies:
        assert guesses == [] and resumed == [] and end.speculation == 0
        return
    assert [g.speculation for g in guesses] == [1, 2], [g.transcript for g in guesses]
    assert "four" not in normalize_text(guesses[0].transcript).replace("4", "four")
    assert [(r.turn, r.speculation) for r in resumed] == [(end.turn, 1)]
    order = [m for _, m in tap.got if m in (guesses[0], resumed[0], guesses[1], end)]
    assert order == [guesses[0], resumed[0], guesses[1], end]
    # the committed turn is the second guess: same words, same decode
    assert end.speculation == 2 and guesses[1].transcript == end.transcript
    assert guesses[1].turn == end.turn and not end.speculative
    assert stage.stats.speculative_published == 2 and stage.stats.speculative_committed == 1
