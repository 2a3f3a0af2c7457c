"""The backchannel word rule (``runtime.backchannel``) on transcripts as Whisper writes them, and
the ledger's backchannel turn: heard, interrupting nothing."""

from __future__ import annotations

import pytest

from voxbus.runtime.backchannel import Heard, heard, is_backchannel
from voxbus.runtime.ledger import TurnLedger

pytestmark = pytest.mark.fast

#: Said over the agent to show one follows: the agent talks on.
BACKCHANNELS = [
    "Mhm.", "Mm-hmm.", "Uh-huh.", "Yeah.", "Okay.", "OK.", "Right.", "Sure.", "Yes.", "Yep.",
    "I see.", "Got it.", "Hmm.", "Alright.", "All right.", "Oh, okay.", "Okay, okay.",
    "Yeah, yeah.", "Mmmhmm", "That's right.",
]
#: How Whisper wrote espeak-ng's "Mhm." heard through a room, and other spellings.
SPELLED = ["M-H-M.", "Mm-mm.", "Mm-hm.", "Yeah-yeah.", "Hm-hmm"]
#: Said over the agent to take the turn: the agent stops.
INTERRUPTIONS = [
    "Wait, stop.", "Stop.", "Hold on.", "No, that's wrong.", "Sorry?", "Can you repeat that?",
    "Yeah, but what about Friday?", "Okay, so what time?", "Actually, make it five people.",
    "Excuse me.", "Wait.", "I see, and the price?", "Yes, please book it.", "No.",
    "Hang on a second.", "What?", "Right, cancel that.", "Um, I have a question.",
    "That's not what I asked.", "Thank you, goodbye.", "Twenty-five.",
]


@pytest.mark.parametrize("text", BACKCHANNELS)
def test_a_backchannel_is_only_backchannel(text: str) -> None:
    assert heard(text) is Heard.BACKCHANNEL and is_backchannel(text)


@pytest.mark.parametrize("text", SPELLED)
def test_a_backchannel_spelled_with_hyphens_is_one(text: str) -> None:
    assert is_backchannel(text)


@pytest.mark.parametrize("text", INTERRUPTIONS)
def test_a_real_interruption_is_speech(text: str) -> None:
    assert heard(text) is Heard.SPEECH and not is_backchannel(text)


@pytest.mark.parametrize("text", ["", "  ", "...", "[cough]", "(coughs)", "*clears throat*"])
def test_no_words_is_nothing(text: str) -> None:
    assert heard(text) is Heard.NOTHING and not is_backchannel(text)


def test_a_backchannel_turn_is_heard_and_interrupts_nothing() -> None:
    ledger: TurnLedger[None] = TurnLedger()
    ledger.commit(1, 0)
    ledger.backchannel(2)
    assert (ledger.heard, ledger.interrupted) == (2, 0) and not ledger.stale(1)
    ledger.began(3)  # the next turn cuts what still plays, as any turn does
    assert ledger.interrupted == 2 and ledger.stale(1)
