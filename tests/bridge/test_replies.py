"""The bridge's replies on the turn ledger, without livekit-server: what the caller hears of
guesses, commits, voids and barge-ins, and what goes back to the bus."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
    """The playout: frames pushed, the first ``played`` of them heard (``play``)."""

    rate = 24_000

    def __init__(self) -> None:
        self.frames: list[AgentFrame] = []
        self.played = 0

    def push(self, f: AgentFrame) -> bool:
        self.frames.append(f)
        return True

    def cancel(self, which: Callable[[AgentFrame], bool]) -> tuple[int, int]:
        return len(self.take(which)), 0

    def take(self, which: Callable[[AgentFrame], bool]) -> list[AgentFrame]:
        heard, rest = self.frames[:self.played], self.frames[self.played:]
        self.frames = heard + [f for f in rest if not which(f)]
        return [f for f in rest if which(f)]

    def play(self, replies: Replies, n: int) -> None:
        for f in self.frames[self.played:self.played + n]:
            replies.frame_started(f)
        self.played += n

    def heard(self) -> list[tuple[int, int]]:
        return [(f.turn, f.seq) for f in self.frames]


class Clock:
    """``call_later`` run by hand: ``fire`` runs what is due."""

    @dataclass
    class Timer:
        callback: Callable[[], None]
        cancelled: bool = False

        def cancel(self) -> None:
            self.cancelled = True

    def __init__(self) -> None:
        self.timers: list[tuple[float, Clock.Timer]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> Clock.Timer:
        timer = Clock.Timer(callback)
        self.timers.append((delay, timer))
        return timer

    def fire(self) -> None:
        timers, self.timers = self.timers, []
        for _delay, timer in timers:
            if not timer.cancelled:
                timer.callback()


class Captions:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def agent(self, turn: int, text: str) -> None:
        self.events.append(("agent", turn, text))

    def agent_end(self, turn: int, *, interrupted: bool, char_end: int = 0) -> None:
        self.events.append(("end", turn, interrupted, char_end))


def make(*, backchannels: bool = True, clock: Clock | None = None,
         end_call: Callable[[str], None] | None = None) -> tuple[Replies, Speaker, list[Message]]:
    speaker, out = Speaker(), list[Message]()
    replies = Replies(session=S, speaker=speaker, captions=Captions(), publish_ctl=out.append,
                      log=structlog.get_logger("test"), backchannels=backchannels,
                      resume_s=1.0, call_later=(clock or Clock()).call_later, end_call=end_call)
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


def test_end_call_hangs_up_once_the_goodbye_has_played() -> None:
    hung: list[str] = []
    replies, speaker, out = make(end_call=hung.append)
    replies.part(ReplyEnd(session=S, turn=1, text="Goodbye.", end_call=True))
    replies.part(frame(1, 0, text_end=4))
    replies.part(frame(1, 1, text_end=8))
    speaker.play(replies, 1)
    assert hung == [], "hung up before the goodbye was heard"
    speaker.play(replies, 1)
    replies.frame_finished(speaker.frames[1])
    assert hung == [""]
    assert isinstance(out[-1], AgentSpoke) and not out[-1].interrupted


def test_transfer_call_goes_once_its_words_have_played() -> None:
    sent: list[str] = []
    replies, speaker, _ = make(end_call=sent.append)
    replies.part(frame(1, 0, text_end=9))
    replies.part(ReplyEnd(session=S, turn=1, text="One moment.", transfer_to="tel:+15550199"))
    speaker.play(replies, 1)
    assert sent == []
    replies.frame_finished(speaker.frames[0])
    assert sent == ["tel:+15550199"]


def test_end_call_without_words_hangs_up_at_once_and_a_cut_goodbye_does_not() -> None:
    hung: list[str] = []
    replies, _, _ = make(end_call=hung.append)
    replies.part(ReplyEnd(session=S, turn=1, text="", end_call=True))
    assert hung == [""]
    hung.clear()
    replies, speaker, _ = make(end_call=hung.append)
    replies.part(frame(1, 0, text_end=4))
    speaker.play(replies, 1)
    replies.barge_in(2, reason="barge_in")  # the caller spoke over the goodbye
    replies.part(ReplyEnd(session=S, turn=1, text="Goodbye.", end_call=True))
    assert hung == [], "the caller spoke over the goodbye: the call goes on"


def test_turn_zero_frames_play_and_are_no_reply() -> None:
    replies, speaker, out = make()
    replies.barge_in(5, reason="barge_in")
    replies.part(frame(0, 0))
    assert speaker.heard() == [(0, 0)] and out == [] and 0 not in replies.replies


# ---- backchannels: the user speaking over a reply pauses it; words decide ---------------------

TEXT = "One two three four five six."


def talking(replies: Replies, speaker: Speaker, *, frames: int = 6, heard: int = 2) -> None:
    """Reply 1 is playing: ``frames`` frames of ``TEXT`` (a word each) came, ``heard`` played."""
    replies.committed(commit(1, 0))
    replies.part(ReplyText(session=S, turn=1, seq=0, text=TEXT, char_start=0,
                           char_end=len(TEXT)))
    ends = [4, 8, 14, 19, 24, 29]
    for seq in range(frames):
        replies.part(frame(1, seq, text_end=ends[seq]))
    speaker.play(replies, heard)


def test_mhm_over_a_reply_pauses_it_and_it_plays_on_where_it_stopped() -> None:
    clock = Clock()
    replies, speaker, out = make(clock=clock)
    talking(replies, speaker)
    replies.user_began(2)
    assert speaker.heard() == [(1, 0), (1, 1)] and out == []  # silence at once; nothing said
    replies.part(frame(1, 6))  # the reply's audio still coming in is kept
    replies.user_words(2, "Mhm", final=False)
    assert speaker.heard() == [(1, 0), (1, 1)]
    replies.user_words(2, "Mhm.", final=True)
    assert speaker.heard() == [(1, seq) for seq in range(7)]  # each frame once, in order
    replies.committed(EndOfTurn(session=S, turn=2, transcript="Mhm.", speech_start_ns=0,
                                speech_end_ns=0))
    replies.part(frame(1, 7))
    assert speaker.heard()[-1] == (1, 7)
    assert out == [] and replies.user_turn == 2 and replies.ledger.interrupted == 0
    assert all(timer.cancelled for _, timer in clock.timers)
    replies.part(ReplyEnd(session=S, turn=1, text=TEXT))
    replies.frame_finished(speaker.frames[-1])
    (spoken,) = out
    assert isinstance(spoken, AgentSpoke) and not spoken.interrupted and spoken.text == TEXT


def test_a_real_word_cuts_the_paused_reply_where_it_paused() -> None:
    replies, speaker, out = make()
    talking(replies, speaker)
    replies.user_began(2)
    replies.user_words(2, "Wait, stop", final=False)
    interrupt, spoken = out
    assert isinstance(interrupt, Interrupt) and interrupt.turn == 1
    assert isinstance(spoken, AgentSpoke) and spoken.interrupted
    assert (spoken.text, spoken.char_end) == ("One two ", 8)
    replies.part(frame(1, 6))
    replies.user_words(2, "Wait, stop.", final=True)
    assert speaker.heard() == [(1, 0), (1, 1)] and len(out) == 2
    assert replies.pause is None and replies.user_turn == 2


def test_a_backchannel_then_more_words_is_a_barge_in() -> None:
    replies, speaker, out = make()
    talking(replies, speaker)
    replies.user_began(2)
    replies.user_words(2, "Okay", final=False)
    assert out == []
    replies.user_words(2, "Okay, but what about Friday?", final=False)  # a guess's words
    assert [type(m) for m in out] == [Interrupt, AgentSpoke]


def test_a_cough_plays_the_reply_on_after_the_resume_time() -> None:
    clock = Clock()
    replies, speaker, out = make(clock=clock)
    talking(replies, speaker)
    replies.user_began(2)
    clock.fire()  # no word within BRIDGE_BACKCHANNEL_RESUME_S
    assert speaker.heard() == [(1, seq) for seq in range(6)] and out == []
    replies.user_words(2, "", final=True)  # the STT took it for noise
    assert out == [] and replies.user_turn == 2
    # a later real interruption still cuts it
    speaker.play(replies, 2)
    replies.user_began(3)
    replies.user_words(3, "Stop.", final=False)
    interrupt, spoken = out
    assert isinstance(interrupt, Interrupt) and interrupt.turn == 2
    assert isinstance(spoken, AgentSpoke) and spoken.char_end == 19


def test_words_after_the_resume_time_still_cut_the_reply() -> None:
    clock = Clock()
    replies, speaker, out = make(clock=clock)
    talking(replies, speaker)
    replies.user_began(2)
    clock.fire()
    replies.user_words(2, "Sorry, what was that?", final=False)
    assert [type(m) for m in out] == [Interrupt, AgentSpoke]


def test_an_answer_to_the_paused_utterance_makes_it_a_turn() -> None:
    replies, speaker, out = make()
    talking(replies, speaker)
    replies.user_began(2)
    replies.part(ReplyText(session=S, turn=2, seq=0, text="Yes?", char_start=0, char_end=4))
    assert [type(m) for m in out] == [Interrupt, AgentSpoke] and replies.pause is None


def test_yes_with_nothing_playing_is_an_ordinary_turn() -> None:
    replies, speaker, out = make()
    replies.user_began(1)
    replies.user_words(1, "Yes.", final=True)
    assert replies.pause is None and replies.user_turn == 1 and out == []
    assert replies.ledger.interrupted == 0


def test_without_backchannels_any_speech_cuts_at_once() -> None:
    replies, speaker, out = make(backchannels=False)
    talking(replies, speaker)
    replies.user_began(2)
    assert [type(m) for m in out] == [Interrupt, AgentSpoke] and replies.pause is None
    assert speaker.heard() == [(1, 0), (1, 1)]


def test_the_session_ending_while_paused_reports_what_was_heard() -> None:
    clock = Clock()
    replies, speaker, out = make(clock=clock)
    talking(replies, speaker)
    replies.user_began(2)
    replies.end("left")
    interrupt, spoken = out
    assert isinstance(spoken, AgentSpoke) and spoken.char_end == 8
    assert replies.pause is None and all(timer.cancelled for _, timer in clock.timers)
