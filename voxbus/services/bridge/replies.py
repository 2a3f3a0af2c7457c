"""The agent's replies in one caller's session, as the caller hears them.

Parts of replies (``AudioOut`` frames, ``ReplyText``, ``ReplyEnd``) come from the bus; the turn
ledger says what each one is: played now, held (a guess's, before its turn is committed), or
dropped (voided, a guess the commit did not name, a turn the user spoke over). The commit releases
the held guess it names; ``TurnResumed`` voids one; the user beginning a new utterance interrupts
every reply to an earlier turn (a barge-in). What the caller actually heard of a reply goes back to
the bus as ``AgentSpoke``, cut where the playout stopped.

Backchannels (``BRIDGE_BACKCHANNELS``): the user beginning an utterance over a reply pauses it at
once (its frames are taken out of the playout and kept; the caller hears silence as soon as a
barge-in would give it) and publishes nothing yet. The first word of that utterance that is not a
backchannel (``runtime.backchannel``), in a partial, a guess's or the final transcript, makes it a
barge-in, cut where it paused. Its final holding only backchannels ("mhm") or no words, or no
word for ``BRIDGE_BACKCHANNEL_RESUME_S`` (a cough), plays the reply on from the frame where it
paused: no word is lost or said twice. A backchannel is heard in the ledger but interrupts nothing.

Turn 0 frames ("not part of a turn", e.g. the echo stage's) are played but are no reply: they are
never interrupted by turn logic and produce no ``AgentSpoke``.

No LiveKit here: the playout and the captions are given (``Speaker``, ``CaptionSink``), so this is
tested on its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

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
from voxbus.runtime import metrics
from voxbus.runtime.backchannel import Heard, heard
from voxbus.runtime.ledger import ReplyKey, TurnLedger, Verdict, Why
from voxbus.services.bridge.audio import AgentAudio, AgentFrame

#: Messages of a reply held until its speculative turn is committed, at most (a first unit is
#: a few hundred 20 ms frames; more than this and the rest of the guess is not kept).
HOLD_MAX = 1500

ReplyPart = AudioOut | ReplyText | ReplyEnd


class Speaker(Protocol):
    """The room's playout, as replies use it."""

    @property
    def rate(self) -> int: ...

    def push(self, f: AgentFrame) -> bool: ...

    def cancel(self, which: Callable[[AgentFrame], bool]) -> tuple[int, int]: ...

    def take(self, which: Callable[[AgentFrame], bool]) -> list[AgentFrame]: ...


class Timer(Protocol):
    def cancel(self) -> None: ...


#: Runs a callback after a delay (the event loop's ``call_later``; a test's own clock).
CallLater = Callable[[float, Callable[[], None]], Timer]


class CaptionSink(Protocol):
    def agent(self, turn: int, text: str) -> None: ...

    def agent_end(self, turn: int, *, interrupted: bool, char_end: int = 0) -> None: ...


@dataclass
class Reply:
    """What the bridge knows of the agent's reply to user turn ``turn``."""

    turn: int
    text: str = ""
    final: bool = False
    frames_in: int = 0
    next_seq: int = 0  # frames below it were taken; a lower one is a copy (a TTS takeover)
    frames_repeated: int = 0
    played_frames: int = 0
    played_char_end: int = 0
    first_frame_ns: int = 0
    first_played_ns: int = 0
    done: bool = False
    #: The agent ends the call once this reply has played (``ReplyEnd.end_call``), or sends it
    #: to ``transfer_to`` (``ReplyEnd.transfer_to``).
    end_call: bool = False
    transfer_to: str = ""
    #: Stopped before its end (a barge-in, the session's end): the call goes on.
    cut: bool = False

    def add_text(self, chunk: ReplyText) -> None:
        if chunk.char_start >= len(self.text):
            self.text += chunk.text
        elif chunk.char_end > len(self.text):  # overlap (redelivery): keep the new tail only
            self.text += chunk.text[len(self.text) - chunk.char_start:]


@dataclass
class Pause:
    """Replies paused because the user began utterance ``turn`` over them."""

    turn: int
    timer: Timer
    #: Their frames not played yet, in playing order (taken from the playout, and those that
    #: arrived since).
    frames: list[AgentFrame] = field(default_factory=list)
    since: float = field(default_factory=time.monotonic)


class Replies:
    """The session's replies, on its turn ledger."""

    def __init__(self, *, session: str, speaker: Speaker, captions: CaptionSink,
                 publish_ctl: Callable[[Message], None], log: Any, backchannels: bool = True,
                 resume_s: float = 1.0, call_later: CallLater | None = None,
                 end_call: Callable[[str], None] | None = None) -> None:
        """``end_call(transfer_to)``: the reply that ends the call (or transfers it to
        ``transfer_to``) has played."""
        self.session = session
        self.speaker = speaker
        self.captions = captions
        self.publish_ctl = publish_ctl
        self.log = log
        self.backchannels = backchannels
        self.resume_s = resume_s
        self._call_later = call_later
        self._end_call = end_call
        self.pause: Pause | None = None
        #: Held parts of each guess not yet committed are the payloads of its live guesses.
        self.ledger: TurnLedger[list[ReplyPart]] = TurnLedger(on_drop=self._dropped)
        self.replies: dict[int, Reply] = {}
        self.speech_end_ns: dict[int, int] = {}  # turn -> end of the caller's speech
        self.first_played_ns = 0
        self._audio = AgentAudio(speaker.rate)

    @property
    def user_turn(self) -> int:
        """The newest utterance the user began."""
        return self.ledger.heard

    def active(self) -> list[Reply]:
        return sorted((r for r in self.replies.values() if not r.done), key=lambda r: r.turn)

    # ---- from the bus ---------------------------------------------------------------------------

    def part(self, msg: ReplyPart) -> None:
        """A part of a reply arrived: played, held or dropped, as the ledger says."""
        verdict = self.ledger.admit(msg.turn, msg.speculation)
        if verdict is Verdict.GO:
            self._play(msg)
        elif verdict is Verdict.HOLD:
            held = self.ledger.hold(msg.turn, msg.speculation, list)
            if len(held) < HOLD_MAX:
                held.append(msg)
            elif len(held) == HOLD_MAX:
                self.log.warning("speculation_hold_full", turn=msg.turn,
                                 speculation=msg.speculation)
                held.append(msg)  # the marker: warned once; nothing more is kept

    def committed(self, msg: EndOfTurn) -> None:
        """The turn is committed: the guess it names plays, any other is dropped."""
        self.speech_end_ns[msg.turn] = msg.speech_end_ns
        for turn in [t for t in self.speech_end_ns if t < msg.turn - 4]:
            del self.speech_end_ns[turn]
        commit = self.ledger.commit(msg.turn, msg.speculation)
        if commit.adopted is not None:
            parts = commit.adopted[:HOLD_MAX]
            self.log.info("speculation_committed", turn=msg.turn, speculation=msg.speculation,
                          held_frames=_frames(parts))
            for part in parts:
                self._play(part)

    def resumed(self, msg: TurnResumed) -> None:
        if self.ledger.void(msg.turn, msg.speculation) is None:  # nothing was held of it
            self._dropped(ReplyKey(msg.turn, msg.speculation), [], Why.VOIDED)

    def _dropped(self, key: ReplyKey, parts: list[ReplyPart], why: Why) -> None:
        self.log.info("speculation_dropped", turn=key.turn, speculation=key.guess,
                      why="barge_in" if why is Why.INTERRUPTED else why.value,
                      held_frames=_frames(parts))

    # ---- playing --------------------------------------------------------------------------------

    def _reply(self, turn: int) -> Reply:
        r = self.replies.get(turn)
        if r is None:
            r = self.replies[turn] = Reply(turn=turn)
            # Old replies that are done are forgotten (the bus keeps the history).
            for t in [t for t, x in self.replies.items() if x.done and t < turn - 2]:
                del self.replies[t]
        return r

    def _play(self, msg: ReplyPart) -> None:
        if msg.turn > 0 and self.ledger.stale(msg.turn):
            if not isinstance(msg, ReplyEnd):
                self._stale_reply(msg.turn)
            return
        if self.pause is not None and msg.turn >= self.pause.turn:
            # the utterance the replies are paused for is answered: it was a turn of its own
            self.barge_in(self.pause.turn, reason="barge_in")
        if isinstance(msg, AudioOut):
            self._audio_out(msg)
        elif isinstance(msg, ReplyText):
            reply = self._reply(msg.turn)
            reply.add_text(msg)
            self.captions.agent(reply.turn, msg.text)
        else:
            reply = self._reply(msg.turn)
            if msg.text:
                reply.text = msg.text
            reply.final = True
            reply.end_call, reply.transfer_to = msg.end_call, msg.transfer_to
            self.captions.agent_end(reply.turn, interrupted=False)
            if reply.done or not reply.text:
                self._call_ends(reply)  # played already, or nothing to say first

    def _audio_out(self, msg: AudioOut) -> None:
        if msg.turn > 0:
            reply = self._reply(msg.turn)
            if msg.seq < reply.next_seq:
                # A TTS replica that took the reply over synthesizes it again from its start: the
                # caller hears each frame once. (The stream drops the copies by message id;
                # this subscription is core NATS and sees them.)
                reply.frames_repeated += 1
                return
            reply.next_seq = msg.seq + 1
            reply.frames_in += 1
            if not reply.first_frame_ns:
                reply.first_frame_ns = time.time_ns()
        try:
            pcm = self._audio.push(msg.pcm, rate=msg.sample_rate_hz, channels=msg.channels,
                                   last=msg.last)
        except ValueError as e:
            self.log.warning("bad_agent_frame", turn=msg.turn, seq=msg.seq, error=str(e))
            return
        f = AgentFrame(
            session=self.session, turn=msg.turn, seq=msg.seq, pcm=pcm,
            duration_s=len(pcm) / 2 / self.speaker.rate, text_end=msg.text_end, last=msg.last,
        )
        if self.pause is not None and 0 < f.turn < self.pause.turn:
            self.pause.frames.append(f)  # its reply is paused: kept for when it plays on
        else:
            self.speaker.push(f)

    # ---- the user speaking over a reply ------------------------------------------------------

    def user_began(self, user_turn: int) -> None:
        """The user began utterance ``user_turn`` (``UserStartedSpeaking``): replies to earlier
        turns pause (or, without backchannels, stop: a barge-in)."""
        if user_turn <= self.ledger.heard:
            return  # known already: begun, or taken as a backchannel
        if self.backchannels and (self.pause is not None or self._talking(user_turn)):
            self._pause(user_turn)
        else:
            self.barge_in(user_turn, reason="barge_in")

    def user_words(self, user_turn: int, text: str, *, final: bool) -> None:
        """Words of utterance ``user_turn`` so far (a partial, a guess's) or in the end
        (``final``): a word that is not a backchannel makes it a barge-in; a final of
        backchannels only, or of no words, over a reply lets the reply play on."""
        if user_turn <= self.ledger.heard:
            return
        what = heard(text)
        if not self.backchannels or what is Heard.SPEECH:
            self.barge_in(user_turn, reason="barge_in")
        elif self.pause is None and not self._talking(user_turn):
            self.barge_in(user_turn, reason="barge_in")  # nothing to talk over: a turn as any
        elif final:
            self.ledger.backchannel(user_turn)
            self.log.info("backchannel", user_turn=user_turn, words=what.value,
                          pii={"text": text})
            if self.pause is not None and self.pause.turn <= user_turn:
                self._resume(why=what.value)
        else:
            self._pause(user_turn)  # (words before the start of speech reached us)

    def _talking(self, user_turn: int) -> bool:
        """A reply to a turn before ``user_turn`` is playing or on its way."""
        return any(0 < r.turn < user_turn for r in self.active())

    def _pause(self, user_turn: int) -> None:
        if self.pause is not None:
            self.pause.turn = max(self.pause.turn, user_turn)
            return
        frames = self.speaker.take(
            lambda f: f.session == self.session and 0 < f.turn < user_turn)
        call_later = self._call_later or asyncio.get_running_loop().call_later
        self.pause = Pause(turn=user_turn, frames=frames,
                           timer=call_later(self.resume_s, self._no_words))
        self.log.info("reply_paused", user_turn=user_turn,
                      replies=[r.turn for r in self.active() if 0 < r.turn < user_turn],
                      held_frames=len(frames))

    def _no_words(self) -> None:
        if self.pause is not None:
            self._resume(why="no_words")

    def _resume(self, *, why: str) -> None:
        """The paused replies play on from the frame where they stopped."""
        pause, self.pause = self.pause, None
        if pause is None:
            return
        pause.timer.cancel()
        frames = [f for f in pause.frames if not self.ledger.stale(f.turn)]
        for f in frames:
            self.speaker.push(f)
        self.log.info("reply_resumed", user_turn=pause.turn, why=why, frames=len(frames),
                      paused_ms=round((time.monotonic() - pause.since) * 1000))

    def _unpause(self, user_turn: int) -> int:
        """A barge-in of ``user_turn``: frames held for replies it stops are dropped, and the
        pause ends if it was for this utterance or an earlier one. Returns the frames dropped."""
        pause = self.pause
        if pause is None:
            return 0
        dropped = sum(1 for f in pause.frames if f.turn < user_turn)
        pause.frames = [f for f in pause.frames if f.turn >= user_turn]
        if user_turn >= pause.turn:
            pause.timer.cancel()
            self.pause = None
        return dropped

    # ---- barge-in and completion ----------------------------------------------------------------

    def _stale_reply(self, turn: int) -> None:
        """A reply to a turn the user already spoke over: stopped before a word of it played."""
        reply = self.replies.get(turn)
        if reply is None or not reply.done:
            self._reply(turn)
            self.barge_in(turn + 1, reason="stale_reply")

    def barge_in(self, user_turn: int, *, reason: str) -> None:
        """The user began utterance ``user_turn``: every reply to an earlier turn stops now."""
        if user_turn <= 0:
            return
        was = self.ledger.interrupted
        self.ledger.began(user_turn)  # guesses of earlier turns are dropped (``_dropped``)
        n_held = self._unpause(user_turn)
        victims = [r for r in self.active() if 0 < r.turn < user_turn]
        if not victims and was >= user_turn - 1:
            return
        t0 = time.perf_counter()
        up_to = user_turn - 1
        n_pending, n_queued = self.speaker.cancel(
            lambda f: f.session == self.session and 0 < f.turn <= up_to
        )
        n_pending += n_held
        if victims:
            metrics.BARGE_INS.add(len(victims), {"reason": reason})
            self.publish_ctl(Interrupt(
                session=self.session, turn=up_to, at_ns=time.time_ns(), reason=reason,
            ))
        for reply in victims:
            self.interrupted(reply, reason=reason)
        self.log.info("barge_in", user_turn=user_turn, interrupted=[r.turn for r in victims],
                      frames_dropped=n_pending + n_queued, queued_dropped=n_queued,
                      clear_ms=round((time.perf_counter() - t0) * 1000, 2))

    def end(self, reason: str) -> None:
        """The session ends: every reply still playing is interrupted where it stands."""
        if self.pause is not None:
            self.pause.timer.cancel()
            self.pause = None
        active = [r for r in self.active() if r.turn > 0]
        if active:
            self.publish_ctl(Interrupt(
                session=self.session, turn=active[-1].turn, at_ns=time.time_ns(), reason=reason,
            ))
        for reply in active:
            self.interrupted(reply, reason=reason)

    def interrupted(self, reply: Reply, *, reason: str) -> None:
        reply.done = True
        reply.cut = True
        char_end = min(reply.played_char_end, len(reply.text)) if reply.text else 0
        self.publish_ctl(AgentSpoke(
            session=self.session, turn=reply.turn, text=reply.text[:char_end], char_end=char_end,
            interrupted=True, at_ns=time.time_ns(),
        ))
        self.captions.agent_end(reply.turn, interrupted=True, char_end=char_end)
        self.log.info("reply_interrupted", turn=reply.turn, reason=reason, char_end=char_end,
                      chars=len(reply.text), played_frames=reply.played_frames)

    def frame_started(self, f: AgentFrame) -> None:
        """Playout: ``f`` began playing (the caller hears it)."""
        if not self.first_played_ns:
            self.first_played_ns = time.time_ns()
        reply = self.replies.get(f.turn) if f.turn > 0 else None
        if reply is None:
            return
        reply.played_frames += 1
        reply.played_char_end = max(reply.played_char_end, f.text_end)
        if not reply.first_played_ns:
            reply.first_played_ns = time.time_ns()
            # the speech's end is on the bridge's clock (AudioIn.capture_ns): comparable
            if end_ns := self.speech_end_ns.get(f.turn, 0):
                metrics.VOICE_TO_VOICE.record(max(0.0, (reply.first_played_ns - end_ns) / 1e9))

    def frame_finished(self, f: AgentFrame) -> None:
        """Playout: the last frame of reply ``f.turn`` finished playing."""
        reply = self.replies.get(f.turn) if f.turn > 0 else None
        if reply is None or reply.done:
            return
        reply.done = True
        self.publish_ctl(AgentSpoke(
            session=self.session, turn=reply.turn, text=reply.text, char_end=len(reply.text),
            interrupted=False, at_ns=time.time_ns(),
        ))
        self.captions.agent_end(reply.turn, interrupted=False)
        self.log.info("reply_played", turn=reply.turn, frames=reply.played_frames,
                      chars=len(reply.text))
        self._call_ends(reply)

    def _call_ends(self, reply: Reply) -> None:
        """The agent hangs up or transfers the call after ``reply``, if it said so and the
        caller did not speak over it."""
        if reply.cut or not (reply.end_call or reply.transfer_to):
            return
        self.log.info("call_ends_after_reply", turn=reply.turn,
                      transfer=bool(reply.transfer_to))
        if self._end_call is not None:
            self._end_call(reply.transfer_to)


def _frames(parts: list[ReplyPart]) -> int:
    return sum(isinstance(p, AudioOut) for p in parts)
