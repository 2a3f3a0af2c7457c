"""One caller in one room = one voxbus session.

Up: the caller's microphone goes to the bus (``mic``). Down: the session's ``AudioOut`` frames go
to the room's playout; transcripts and reply text go to the room as captions (``captions``);
``UserStartedSpeaking`` (or a transcript of a newer turn) while a reply plays pauses it, and its
words make it a barge-in or a backchannel the reply plays on over (``replies``). Control messages
go to the bus in order, waiting for it (``control_out``).

What plays, what is held until its turn is committed and what is dropped, barge-in, and what the
caller heard of each reply: ``replies`` (on the session's turn ledger).
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
from typing import Any, Protocol

import msgspec
import structlog
from livekit import rtc
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from voxbus.contracts.control import CALLER_STATE, state_key
from voxbus.contracts.messages import (
    AudioOut,
    EndOfTurn,
    ErrorEvent,
    Message,
    ReplyEnd,
    ReplyText,
    SessionEnded,
    SessionStarted,
    Transcript,
    TurnResumed,
    UserStartedSpeaking,
)
from voxbus.contracts.sealing import SealError
from voxbus.contracts.subjects import Kind, subject
from voxbus.runtime import metrics
from voxbus.runtime.bus import Bus
from voxbus.runtime.keys import KeyGone
from voxbus.runtime.tasks import TaskSet
from voxbus.services.bridge.audio import AgentFrame
from voxbus.services.bridge.captions import Captions
from voxbus.services.bridge.control_out import ControlOut
from voxbus.services.bridge.mic import Mic
from voxbus.services.bridge.playout import Playout
from voxbus.services.bridge.replies import Replies
from voxbus.services.bridge.settings import BridgeSettings

log = structlog.get_logger("voxbus.bridge.session")

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


def caller_session_id(s: BridgeSettings, room: str, identity: str,
                      participant_sid: str = "") -> str:
    """``session_id_for`` with this bridge's key (``session_key`` of its settings)."""
    return session_id_for(session_key(s.session_key, s.api_secret), room, identity,
                          participant_sid)


class CallControl(Protocol):
    """What the agent may do to a caller's call (the bridge's LiveKit RoomService and SIP
    service)."""

    async def remove(self, identity: str) -> None: ...

    async def transfer(self, identity: str, to: str) -> None: ...


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
    #: The agent the room's callers talk to (``agents``; "": the LLM worker's default).
    agent: str = ""
    #: Hangs up on a caller, transfers their phone call (``room.CallControl``).
    calls: CallControl | None = None


class CallerSession:
    def __init__(self, link: RoomLink, participant: rtc.RemoteParticipant) -> None:
        self.link = link
        self.s = link.settings
        self.bus = link.bus
        self.region = link.region
        self.identity = participant.identity
        self.participant_sid = participant.sid
        self.id = caller_session_id(self.s, link.room_name, participant.identity,
                                    participant.sid)
        self.log = log.bind(session=self.id)
        self.ended = asyncio.Event()
        self.end_reason = ""
        self.started_ns = time.time_ns()
        self._subs: list[Subscription] = []
        self._tasks = TaskSet(f"session-{self.id}")
        #: The hang-up or transfer, once asked for: it outlives ``_tasks``, which ``end``
        #: closes.
        self._call_end: asyncio.Task[None] | None = None
        self.ctl = ControlOut(
            self.bus, self.region, msg_id_prefix=f"{self.id}-ctl-{self.started_ns}",
            attempt_timeout_s=self.s.publish_timeout_s * 2, log=self.log,
        )
        self.mic = Mic(
            self.bus, self.region, self.s, session=self.id, log=self.log, tasks=self._tasks,
            publish_ctl=self.publish_ctl, turns_heard=lambda: self.replies.user_turn,
        )
        self.captions = Captions(
            link.room.local_participant, session=self.id, caller_identity=self.identity,
            agent_track_sid=link.agent_track_sid, log=self.log, topic=self.s.caption_topic,
            enabled=self.s.captions,
        )
        self.replies = Replies(session=self.id, speaker=link.playout, captions=self.captions,
                               publish_ctl=self.publish_ctl, log=self.log,
                               backchannels=self.s.backchannels,
                               resume_s=self.s.backchannel_resume_s, end_call=self.end_call)

    # ---- lifecycle ----------------------------------------------------------------------------

    async def _save_caller(self) -> None:
        """``<session>.caller``: the room and caller behind the opaque id, for an operator who
        must find a caller's session (to purge it); erased with the session."""
        caller = {"room": self.link.room_name, "identity": self.identity,
                  "participant_sid": self.participant_sid}
        if self.link.agent:
            caller["agent"] = self.link.agent
        value = json.dumps(caller).encode()
        try:
            kv = await self.bus.state(self.region)
            await kv.put(state_key(self.id, CALLER_STATE), value)
        except Exception as e:  # noqa: BLE001 - the call goes on without it
            self.log.warning("caller_not_saved", error=repr(e))

    async def start(self) -> None:
        self.ctl.start(self._tasks, name=f"ctl-{self.id}")
        self.captions.start(self._tasks, name=f"captions-{self.id}")
        # Which room and caller this is stays in the session's state, not on the wire
        self._tasks.spawn(self._save_caller(), name=f"caller-{self.id}")
        self.publish_ctl(SessionStarted(session=self.id, at_ns=self.started_ns,
                                        agent=self.link.agent))
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
        if self.ended.is_set():  # the caller left while we were subscribing: ``end`` found
            await self._unsubscribe()  # neither the subscriptions nor the audio sender
            await self.mic.close()
            return
        self.log.info("session_started", participant_sid=self.participant_sid,
                      agent=self.link.agent)
        self.mic.listen()

    def attach_track(self, track: rtc.Track) -> None:
        if not self.ended.is_set():
            self.mic.attach(track)

    def detach_track(self, track: rtc.Track) -> None:
        self.mic.detach(track)

    async def purge(self) -> None:
        """The session is being purged (``ops.purge``): stop it now and write nothing more for
        it, not even its end (control messages still queued are dropped)."""
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
        self.replies.end(reason)
        await self._unsubscribe()
        await self.mic.close()  # what the caller said last is stored before the session ends
        self.publish_ctl(SessionEnded(session=self.id, reason=reason, at_ns=time.time_ns()))
        await self.ctl.close()
        await self._tasks.close()
        self.log.info("session_ended", reason=reason, frames_in=self.mic.frames_in,
                      frames_dropped=self.mic.frames_dropped)

    def end_call(self, transfer_to: str = "") -> None:
        """The agent ended the call (its ``end_call`` reply has played): the session ends and
        the caller leaves the room (a phone call gets its BYE); or it sends a phone call to
        ``transfer_to`` (a SIP REFER: the caller's phone calls there)."""
        if self.ended.is_set() or self._call_end is not None:
            return
        self._call_end = asyncio.get_running_loop().create_task(
            self._transfer(transfer_to) if transfer_to else self._hang_up(), name="call-end")

    async def _hang_up(self) -> None:
        self.log.info("agent_hung_up")
        await self.end("agent_hung_up")
        if self.link.calls is None:
            return
        try:
            await self.link.calls.remove(self.identity)
        except Exception as e:  # noqa: BLE001 - the caller may have left already
            self.log.warning("hang_up_failed", pii={"error": repr(e)})  # it may name the caller

    async def _transfer(self, to: str) -> None:
        self.log.info("call_transfer", pii={"to": to})
        try:
            if self.link.calls is None:
                raise RuntimeError("this room cannot transfer calls")
            await self.link.calls.transfer(self.identity, to)
        except Exception as e:  # noqa: BLE001 - said on the bus; the call goes on
            self._call_end = None
            self.log.warning("call_transfer_failed", pii={"error": repr(e)})  # it may name them
            self.publish_ctl(ErrorEvent(session=self.id, code="transfer_failed", stage="bridge",
                                        message="the call was not transferred "
                                                f"({type(e).__name__})", at_ns=time.time_ns()))
            return
        self.log.info("call_transferred")
        await self.end("transferred")

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

    async def _decode(self, raw: Msg) -> Any:
        try:
            msg = await self.bus.read(raw.subject, raw.data)
        except KeyGone:  # purged: nothing more of it is heard
            return None
        except (msgspec.DecodeError, msgspec.ValidationError, SealError) as e:
            self.log.warning("bad_message", subject=raw.subject, error=str(e))
            return None
        if msg.session != self.id:
            self.log.warning("session_mismatch", subject=raw.subject)
            return None
        return msg

    async def _on_audio_out(self, raw: Msg) -> None:
        msg = await self._decode(raw)
        if not isinstance(msg, AudioOut) or self.ended.is_set():
            return
        self.replies.part(msg)

    async def _on_control(self, raw: Msg) -> None:
        msg = await self._decode(raw)
        if msg is None or self.ended.is_set():
            return
        if isinstance(msg, UserStartedSpeaking):
            self.replies.user_began(msg.turn)
        elif isinstance(msg, Transcript):
            self.replies.user_words(msg.turn, msg.text, final=msg.is_final)
            if msg.is_final and msg.text:
                self.captions.user(msg, track_sid=self.mic.track_sid)
        elif isinstance(msg, ReplyText | ReplyEnd):
            self.replies.part(msg)
        elif isinstance(msg, EndOfTurn):
            # a guess's words are words said so far; the commit's are the final's
            self.replies.user_words(msg.turn, msg.transcript, final=not msg.speculative)
            if not msg.speculative:
                self.replies.committed(msg)
        elif isinstance(msg, TurnResumed):
            self.replies.resumed(msg)

    # ---- what the room tells the session --------------------------------------------------------

    def barge_in(self, user_turn: int, *, reason: str) -> None:
        """The user began utterance ``user_turn``: every reply to an earlier turn stops now."""
        self.replies.barge_in(user_turn, reason=reason)

    def frame_started(self, f: AgentFrame) -> None:
        """Playout: ``f`` began playing (the caller hears it)."""
        self.replies.frame_started(f)

    def frame_finished(self, f: AgentFrame) -> None:
        """Playout: the last frame of reply ``f.turn`` finished playing."""
        self.replies.frame_finished(f)
