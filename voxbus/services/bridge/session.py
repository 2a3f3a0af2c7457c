"""One caller in one room = one voxbus session.

Up: the caller's microphone goes to the bus (``mic``). Down: the session's ``AudioOut`` frames go
to the room's playout; transcripts and reply text go to the room as captions (``captions``);
``UserStartedSpeaking`` (or a transcript of a newer turn) while a reply plays is a barge-in.
Control messages go to the bus in order, waiting for it (``control_out``).

Speculation: the reply to a speculative ``EndOfTurn`` (its frames and text carry
``speculation`` k) is held here, never played, until the committed ``EndOfTurn`` of the turn names
guess k: then what was held plays at once and the rest follows as it comes. Anything else
speculative of the turn (a guess the commit does not name, or one ``TurnResumed`` voided) is
dropped unheard, and so never reaches ``AgentSpoke`` or the history.

Turn 0 frames ("not part of a turn", e.g. the echo stage's) are played but are no reply: they are
never interrupted by turn logic and produce no ``AgentSpoke``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from livekit import rtc
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from voxbus.contracts import decode
from voxbus.contracts.control import CALLER_STATE, state_key
from voxbus.contracts.messages import (
    AgentSpoke,
    AudioOut,
    EndOfTurn,
    Interrupt,
    Message,
    ReplyEnd,
    ReplyText,
    SessionEnded,
    SessionStarted,
    Transcript,
    TurnResumed,
    UserStartedSpeaking,
)
from voxbus.contracts.streams import state_bucket
from voxbus.contracts.subjects import Kind, subject
from voxbus.runtime import metrics
from voxbus.runtime.bus import Bus
from voxbus.runtime.tasks import TaskSet
from voxbus.services.bridge.audio import AgentAudio, AgentFrame
from voxbus.services.bridge.captions import Captions
from voxbus.services.bridge.control_out import ControlOut
from voxbus.services.bridge.mic import Mic
from voxbus.services.bridge.playout import Playout
from voxbus.services.bridge.settings import BridgeSettings

log = structlog.get_logger("voxbus.bridge.session")

#: Messages of a reply held until its speculative turn is committed, at most (a first unit is
#: a few hundred 20 ms frames; more than this and the rest of the guess is not kept).
HOLD_MAX = 1500

ReplyPart = AudioOut | ReplyText | ReplyEnd


def session_key(settings_key: str, api_secret: str) -> bytes:
    """The key session ids are made with: ``BRIDGE_SESSION_KEY``, else one derived from the
    LiveKit API secret (whoever holds that can mint room tokens anyway)."""
    if settings_key:
        return settings_key.encode()
    return hmac.new(api_secret.encode(), b"voxbus session ids", hashlib.sha256).digest()


def session_id_for(key: bytes, room: str, identity: str, participant_sid: str = "") -> str:
    """An opaque session id (one subject token) for a caller in a room: a keyed hash of the exact
    names and the participant's sid, so two joins of the same identity are two sessions, and the
    id says nothing of the room or the caller (a phone number, say) to anyone without the key.
    Which room and caller it stands for is kept in the session's state (``<session>.caller``),
    erased with the session by a purge."""
    mac = hmac.new(key, f"{room}\0{identity}\0{participant_sid}".encode(), hashlib.sha256)
    return "s" + base64.b32encode(mac.digest()[:20]).decode().lower().rstrip("=")


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

    def add_text(self, chunk: ReplyText) -> None:
        if chunk.char_start >= len(self.text):
            self.text += chunk.text
        elif chunk.char_end > len(self.text):  # overlap (redelivery): keep the new tail only
            self.text += chunk.text[len(self.text) - chunk.char_start:]


@dataclass(frozen=True, kw_only=True)
class RoomLink:
    """What a session needs of its room."""

    bus: Bus
    settings: BridgeSettings
    #: The room's region, chosen at dispatch (``routing``): its sessions live there.
    region: str
    room_name: str
    room: rtc.Room
    playout: Playout
    agent_track_sid: Callable[[], str]


class CallerSession:
    def __init__(self, link: RoomLink, participant: rtc.RemoteParticipant) -> None:
        self.link = link
        self.s = link.settings
        self.bus = link.bus
        self.region = link.region
        self.identity = participant.identity
        self.participant_sid = participant.sid
        self.id = session_id_for(session_key(self.s.session_key, self.s.api_secret),
                                 link.room_name, participant.identity, participant.sid)
        self.log = log.bind(session=self.id)
        self.replies: dict[int, Reply] = {}
        #: turn -> the guess its committed EndOfTurn named (0: none)
        self.commits: dict[int, int] = {}
        self.speech_end_ns: dict[int, int] = {}  # turn -> end of the caller's speech
        self.held: dict[tuple[int, int], list[ReplyPart]] = {}  # (turn, speculation) -> parts
        self.voided: set[tuple[int, int]] = set()
        self.user_turn = 0
        self.interrupted_turn = 0
        self.ended = asyncio.Event()
        self.end_reason = ""
        self.purged = False  # being purged: nothing more is published for it
        self.started_ns = time.time_ns()
        self.first_audio_out_played_ns = 0
        self._agent_audio = AgentAudio(link.playout.rate)
        self._subs: list[Subscription] = []
        self._tasks = TaskSet(f"session-{self.id}")
        self.ctl = ControlOut(
            self.bus, self.region, msg_id_prefix=f"{self.id}-ctl-{self.started_ns}",
            attempt_timeout_s=self.s.publish_timeout_s * 2, log=self.log,
        )
        self.mic = Mic(
            self.bus, self.region, self.s, session=self.id, log=self.log, tasks=self._tasks,
            publish_ctl=self.publish_ctl, turns_heard=lambda: self.user_turn,
        )
        self.captions = Captions(
            link.room.local_participant, session=self.id, caller_identity=self.identity,
            agent_track_sid=link.agent_track_sid, log=self.log, topic=self.s.caption_topic,
            enabled=self.s.captions,
        )

    # ---- lifecycle ----------------------------------------------------------------------------

    async def _save_caller(self) -> None:
        """``<session>.caller``: the room and caller behind the opaque id, for an operator who
        must find a caller's session (to purge it); erased with the session."""
        value = json.dumps({"room": self.link.room_name, "identity": self.identity,
                            "participant_sid": self.participant_sid}).encode()
        try:
            kv = await self.bus.kv(state_bucket(self.region))
            await kv.put(state_key(self.id, CALLER_STATE), value)
        except Exception as e:  # noqa: BLE001 - the call goes on without it
            self.log.warning("caller_not_saved", error=repr(e))

    async def start(self) -> None:
        self.ctl.start(self._tasks, name=f"ctl-{self.id}")
        self.captions.start(self._tasks, name=f"captions-{self.id}")
        # Which room and caller this is stays in the session's state, not on the wire
        self._tasks.spawn(self._save_caller(), name=f"caller-{self.id}")
        self.publish_ctl(SessionStarted(session=self.id, at_ns=self.started_ns))
        metrics.SESSIONS.add(1, {"stage": "bridge"})
        nc = self.bus.nc
        subs = [
            (Kind.AUDIO_OUT, self._on_audio_out),
            (Kind.SPEECH, self._on_control),
            (Kind.TRANSCRIPT, self._on_control),
            (Kind.REPLY, self._on_control),
            (Kind.TURN, self._on_control),
        ]
        for kind, cb in subs:
            self._subs.append(await nc.subscribe(subject(self.region, self.id, kind), cb=cb))
        await self.mic.open()
        if self.ended.is_set():  # the caller left while we were subscribing
            await self._unsubscribe()
            return
        self.log.info("session_started", participant_sid=self.participant_sid)
        self.mic.listen()

    def attach_track(self, track: rtc.Track) -> None:
        if not self.ended.is_set():
            self.mic.attach(track)

    def detach_track(self, track: rtc.Track) -> None:
        self.mic.detach(track)

    async def purge(self) -> None:
        """The session is being purged (``ops.purge``): stop it now and write nothing more for
        it, not even its end (control messages still queued are dropped)."""
        self.purged = True
        self.ctl.purge()
        self.mic.purge()
        await self.end("purged")

    async def end(self, reason: str) -> None:
        """Stop everything of this session: its audio leaves the room at once; the bus hears
        what the agent got to say and ``SessionEnded``. Idempotent."""
        if self.ended.is_set():
            return
        self.ended.set()
        self.end_reason = reason
        self.link.playout.cancel(lambda f: f.session == self.id)
        active = [r for r in self.active_replies() if r.turn > 0]
        if active:
            self.publish_ctl(Interrupt(
                session=self.id, turn=active[-1].turn, at_ns=time.time_ns(), reason=reason,
            ))
        for reply in active:
            self._interrupted(reply, reason=reason)
        await self._unsubscribe()
        await self.mic.close()  # what the caller said last is stored before the session ends
        self.publish_ctl(SessionEnded(session=self.id, reason=reason, at_ns=time.time_ns()))
        await self.ctl.close()
        await self._tasks.close()
        self.log.info("session_ended", reason=reason, frames_in=self.mic.frames_in,
                      frames_dropped=self.mic.frames_dropped)

    async def _unsubscribe(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # ---- bus publishing -----------------------------------------------------------------------

    def publish_ctl(self, msg: Message) -> None:
        """Control messages go out in order from one task; they wait (bounded) for the bus."""
        self.ctl.publish(msg)

    # ---- from the bus -------------------------------------------------------------------------

    def _decode(self, raw: Msg) -> Any:
        try:
            msg = decode(raw.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            self.log.warning("bad_message", subject=raw.subject, error=str(e))
            return None
        if msg.session != self.id:
            self.log.warning("session_mismatch", subject=raw.subject)
            return None
        return msg

    def _reply(self, turn: int) -> Reply:
        r = self.replies.get(turn)
        if r is None:
            r = self.replies[turn] = Reply(turn=turn)
            # Old replies that are done are forgotten (the bus keeps the history).
            for t in [t for t, x in self.replies.items() if x.done and t < turn - 2]:
                del self.replies[t]
        return r

    def active_replies(self) -> list[Reply]:
        return sorted((r for r in self.replies.values() if not r.done), key=lambda r: r.turn)

    def _stale(self, turn: int) -> bool:
        """A reply to turn ``turn`` is stale once it was interrupted or the user began a newer
        utterance."""
        return turn <= self.interrupted_turn or turn < self.user_turn

    async def _on_audio_out(self, raw: Msg) -> None:
        msg = self._decode(raw)
        if not isinstance(msg, AudioOut) or self.ended.is_set():
            return
        if self._admit(msg):
            self._audio_out(msg)

    # ---- speculation ------------------------------------------------------------------------

    def _admit(self, msg: ReplyPart) -> bool:
        """Whether a part of a reply is handled now; a guess's part before its commit is held."""
        if msg.turn <= 0:
            return True
        committed = self.commits.get(msg.turn)
        if committed is not None:
            return msg.speculation == committed
        if msg.speculation == 0:  # the reply to committed words (its commit is on its way)
            return True
        key = (msg.turn, msg.speculation)
        if key in self.voided or self._stale(msg.turn):
            return False
        held = self.held.setdefault(key, [])
        if len(held) < HOLD_MAX:
            held.append(msg)
        elif len(held) == HOLD_MAX:
            self.log.warning("speculation_hold_full", turn=msg.turn, speculation=msg.speculation)
            held.append(msg)  # the marker: warned once; nothing more is kept
        return False

    def _committed(self, msg: EndOfTurn) -> None:
        """The turn is committed: the guess it names plays, any other is dropped."""
        self.commits[msg.turn] = msg.speculation
        self.speech_end_ns[msg.turn] = msg.speech_end_ns
        for turn in [t for t in self.commits if t < msg.turn - 4]:
            del self.commits[turn]
            self.speech_end_ns.pop(turn, None)
        self.voided = {key for key in self.voided if key[0] > msg.turn}
        for key in [key for key in self.held if key[0] <= msg.turn]:
            parts = self.held.pop(key)[:HOLD_MAX]
            if key == (msg.turn, msg.speculation):
                self.log.info("speculation_committed", turn=msg.turn,
                              speculation=msg.speculation,
                              held_frames=sum(isinstance(p, AudioOut) for p in parts))
                for part in parts:
                    self._handle_part(part)
            else:
                self._drop_guess(key, parts, why="not_committed")

    def _drop_guess(self, key: tuple[int, int], parts: list[ReplyPart], *, why: str) -> None:
        self.log.info("speculation_dropped", turn=key[0], speculation=key[1], why=why,
                      held_frames=sum(isinstance(p, AudioOut) for p in parts))

    def _resumed(self, msg: TurnResumed) -> None:
        key = (msg.turn, msg.speculation)
        self.voided.add(key)
        self._drop_guess(key, self.held.pop(key, []), why="resumed")

    def _handle_part(self, msg: ReplyPart) -> None:
        if isinstance(msg, AudioOut):
            self._audio_out(msg)
        elif isinstance(msg, ReplyText):
            self._reply_text(msg)
        else:
            self._reply_end(msg)

    # ---- replies ----------------------------------------------------------------------------

    def _audio_out(self, msg: AudioOut) -> None:
        if msg.turn > 0:
            if self._stale(msg.turn):
                self._stale_reply(msg.turn)
                return
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
            pcm = self._agent_audio.push(msg.pcm, rate=msg.sample_rate_hz,
                                         channels=msg.channels, last=msg.last)
        except ValueError as e:
            self.log.warning("bad_agent_frame", turn=msg.turn, seq=msg.seq, error=str(e))
            return
        self.link.playout.push(AgentFrame(
            session=self.id, turn=msg.turn, seq=msg.seq, pcm=pcm,
            duration_s=len(pcm) / 2 / self.link.playout.rate, text_end=msg.text_end,
            last=msg.last,
        ))

    async def _on_control(self, raw: Msg) -> None:
        msg = self._decode(raw)
        if msg is None or self.ended.is_set():
            return
        if isinstance(msg, UserStartedSpeaking):
            self.barge_in(msg.turn, reason="barge_in")
        elif isinstance(msg, Transcript):
            if msg.turn > self.user_turn:
                self.barge_in(msg.turn, reason="barge_in")
            if msg.is_final and msg.text:
                self.captions.user(msg, track_sid=self.mic.track_sid)
        elif isinstance(msg, ReplyText | ReplyEnd):
            if self._admit(msg):
                self._handle_part(msg)
        elif isinstance(msg, EndOfTurn):
            if not msg.speculative:
                self._committed(msg)
        elif isinstance(msg, TurnResumed):
            self._resumed(msg)

    def _reply_text(self, msg: ReplyText) -> None:
        if msg.turn > 0 and self._stale(msg.turn):
            self._stale_reply(msg.turn)
            return
        reply = self._reply(msg.turn)
        reply.add_text(msg)
        self.captions.agent(reply.turn, msg.text)

    def _reply_end(self, msg: ReplyEnd) -> None:
        if msg.turn > 0 and self._stale(msg.turn):
            return
        reply = self._reply(msg.turn)
        if msg.text:
            reply.text = msg.text
        reply.final = True
        self.captions.agent_end(reply.turn, interrupted=False)

    # ---- barge-in and completion --------------------------------------------------------------

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
        self.user_turn = max(self.user_turn, user_turn)
        for key in [key for key in self.held if key[0] < user_turn]:
            self._drop_guess(key, self.held.pop(key), why="barge_in")
        victims = [r for r in self.active_replies() if 0 < r.turn < user_turn]
        if not victims and self.interrupted_turn >= user_turn - 1:
            return
        t0 = time.perf_counter()
        up_to = user_turn - 1
        self.interrupted_turn = max(self.interrupted_turn, up_to)
        n_pending, n_queued = self.link.playout.cancel(
            lambda f: f.session == self.id and 0 < f.turn <= up_to
        )
        if victims:
            metrics.BARGE_INS.add(len(victims), {"reason": reason})
            self.publish_ctl(Interrupt(
                session=self.id, turn=up_to, at_ns=time.time_ns(), reason=reason,
            ))
        for reply in victims:
            self._interrupted(reply, reason=reason)
        self.log.info("barge_in", user_turn=user_turn, interrupted=[r.turn for r in victims],
                      frames_dropped=n_pending + n_queued, queued_dropped=n_queued,
                      clear_ms=round((time.perf_counter() - t0) * 1000, 2))

    def _interrupted(self, reply: Reply, *, reason: str) -> None:
        reply.done = True
        char_end = min(reply.played_char_end, len(reply.text)) if reply.text else 0
        self.publish_ctl(AgentSpoke(
            session=self.id, turn=reply.turn, text=reply.text[:char_end], char_end=char_end,
            interrupted=True, at_ns=time.time_ns(),
        ))
        self.captions.agent_end(reply.turn, interrupted=True, char_end=char_end)
        self.log.info("reply_interrupted", turn=reply.turn, reason=reason, char_end=char_end,
                      chars=len(reply.text), played_frames=reply.played_frames)

    def frame_started(self, f: AgentFrame) -> None:
        """Playout: ``f`` began playing (the caller hears it)."""
        if not self.first_audio_out_played_ns:
            self.first_audio_out_played_ns = time.time_ns()
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
            session=self.id, turn=reply.turn, text=reply.text, char_end=len(reply.text),
            interrupted=False, at_ns=time.time_ns(),
        ))
        self.captions.agent_end(reply.turn, interrupted=False)
        self.log.info("reply_played", turn=reply.turn, frames=reply.played_frames,
                      chars=len(reply.text))
