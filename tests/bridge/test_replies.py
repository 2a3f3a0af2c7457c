"""The bridge's replies on the turn ledger, without livekit-server: what the caller hears of
guesses, commits, voids and barge-ins, and what goes back to the bus."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import structlog

from voxbus.contracts.messages import (
    AgentSpoke,
    AudioOut,
    EndOfTurn,
    Interrupt,
    Message,
    ReplyEnd,
    ReplyText,
    TurnResumed,
)
from voxbus.services.bridge.audio import AgentFrame
from voxbus.services.bridge.replies import Replies

pytestmark = pytest.mark.fast

S = "s1"


class Speaker:
    rate = 24_000

    def __init__(self) -> None:
        self.frames: list[AgentFrame] = []

    def push(self, f: AgentFrame) -> bool:
        self.frames.append(f)
        return True

    def cancel(self, which: Callable[[AgentFrame], bool]) -> tuple[int, int]:
        gone = [f for f in self.frames if which(f)]
        self.frames = [f for f in self.frames if not which(f)]
        return len(gone), 0

    def heard(self) -> list[tuple[int, int]]:
        return [(f.turn, f.seq) for f in self.frames]


class Captions:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def agent(self, turn: int, text: str) -> None:
        self.events.append(("agent", turn, text))

    def agent_end(self, turn: int, *, interrupted: bool, char_end: int = 0) -> None:
        self.events.append(("end", turn, interrupted, char_end))


def make() -> tuple[Replies, Speaker, list[Message]]:
    speaker, out = Speaker(), list[Message]()
    replies = Replies(session=S, speaker=speaker, captions=Captions(), publish_ctl=out.append,
                      log=structlog.get_logger("test"))
    return replies, speaker, out


def frame(turn: int, seq: int, guess: int = 0, *, text_end: int = 0) -> AudioOut:
    return AudioOut(session=S, turn=turn, seq=seq, sample_rate_hz=24_000, pcm=b"\0\0" * 480,
                    text_start=0, text_end=text_end, speculation=guess)


def commit(turn: int, guess: int) -> EndOfTurn:
    return EndOfTurn(session=S, turn=turn, transcript="hello", speech_start_ns=0, speech_end_ns=0,
                     speculation=guess)


def test_a_guess_plays_only_once_committed_and_then_all_of_it() -> None:
    replies, speaker, _ = make()
    replies.part(frame(1, 0, guess=2))
    replies.part(frame(1, 1, guess=2))
    assert speaker.heard() == []
    replies.committed(commit(1, 2))
    assert speaker.heard() == [(1, 0), (1, 1)]
    replies.part(frame(1, 2, guess=2))  # the rest follows as it comes
    assert speaker.heard()[-1] == (1, 2)


def test_a_voided_guess_and_one_the_commit_does_not_name_are_never_heard() -> None:
    replies, speaker, _ = make()
    replies.part(frame(1, 0, guess=1))
    replies.resumed(TurnResumed(session=S, turn=1, speculation=1))
    replies.part(frame(1, 1, guess=1))  # late part of the voided guess
    replies.part(frame(1, 0, guess=2))
    replies.committed(commit(1, 0))  # the commit names no guess: guess 2 goes too
    replies.part(frame(1, 1, guess=2))
    assert speaker.heard() == []
    replies.part(frame(1, 0))  # the reply to the committed words
    assert speaker.heard() == [(1, 0)]


def test_a_barge_in_stops_the_reply_and_says_what_was_heard() -> None:
    replies, speaker, out = make()
    replies.part(ReplyText(session=S, turn=1, seq=0, text="Hello there.", char_start=0,
                           char_end=12))
    replies.part(frame(1, 0, text_end=6))
    replies.frame_started(speaker.frames[0])  # the caller heard "Hello "
    replies.barge_in(2, reason="barge_in")
    assert speaker.heard() == []
    interrupt, spoken = out
    assert isinstance(interrupt, Interrupt) and interrupt.turn == 1
    assert isinstance(spoken, AgentSpoke) and spoken.interrupted
    assert (spoken.text, spoken.char_end) == ("Hello ", 6)
    replies.part(frame(1, 1))  # what was still on its way is never heard
    assert speaker.heard() == []
    assert replies.user_turn == 2


def test_a_reply_to_a_turn_spoken_over_is_stopped_and_reported_unheard() -> None:
    replies, speaker, out = make()
    replies.barge_in(3, reason="barge_in")  # the user is on turn 3 already
    replies.part(frame(2, 0))
    assert speaker.heard() == []
    (spoken,) = [m for m in out if isinstance(m, AgentSpoke)]
    assert spoken.turn == 2 and spoken.char_end == 0 and spoken.interrupted


def test_a_taken_over_reply_is_heard_once() -> None:
    replies, speaker, _ = make()
    for seq in (0, 1, 0, 1, 2):  # a TTS replica took over and spoke it again from the start
        replies.part(frame(1, seq))
    assert speaker.heard() == [(1, 0), (1, 1), (1, 2)]
    assert replies.replies[1].frames_repeated == 2


def test_a_finished_reply_is_reported_whole() -> None:
    replies, speaker, out = make()
    replies.part(ReplyText(session=S, turn=1, seq=0, text="Done.", char_start=0, char_end=5))
    replies.part(ReplyEnd(session=S, turn=1, text="Done."))
    replies.part(frame(1, 0, text_end=5))
    replies.frame_started(speaker.frames[0])
    replies.frame_finished(speaker.frames[0])
    (spoken,) = out
    assert isinstance(spoken, AgentSpoke) and not spoken.interrupted and spoken.text == "Done."


def test_turn_zero_frames_play_and_are_no_reply() -> None:
    replies, speaker, out = make()
    replies.barge_in(5, reason="barge_in")
    replies.part(frame(0, 0))
    assert speaker.heard() == [(0, 0)] and out == [] and 0 not in replies.replies
