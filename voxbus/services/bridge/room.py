"""The agent in one LiveKit room: one connection, one agent audio track, one session per caller."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from livekit import api, rtc

from voxbus.runtime.bus import Bus
from voxbus.runtime.tasks import TaskSet, cancel_and_wait
from voxbus.services.bridge.audio import AgentFrame
from voxbus.services.bridge.control_out import CTL_RETRY_S
from voxbus.services.bridge.playout import Playout
from voxbus.services.bridge.session import CallerSession, RoomLink, caller_session_id
from voxbus.services.bridge.settings import BridgeSettings


@dataclass(frozen=True)
class RoomCalls:
    """``session.CallControl`` for the callers of one room, through the bridge's LiveKit API."""

    room: str
    livekit: Callable[[], api.LiveKitAPI]

    async def remove(self, identity: str) -> None:
        """A phone caller's call is hung up (livekit-sip sends BYE); a WebRTC caller leaves."""
        await self.livekit().room.remove_participant(
            api.RoomParticipantIdentity(room=self.room, identity=identity))

    async def transfer(self, identity: str, to: str) -> None:
        """A phone call goes to ``to`` (a SIP REFER); answers once the phone took it."""
        await self.livekit().sip.transfer_sip_participant(api.TransferSIPParticipantRequest(
            room_name=self.room, participant_identity=identity, transfer_to=to))

log = structlog.get_logger("voxbus.bridge.room")

_CALLER_KINDS = {
    rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
    rtc.ParticipantKind.PARTICIPANT_KIND_SIP,
    rtc.ParticipantKind.PARTICIPANT_KIND_INGRESS,
}
_CLOSED = {rtc.DisconnectReason.ROOM_DELETED, rtc.DisconnectReason.ROOM_CLOSED}


def agent_token(settings: BridgeSettings, room: str) -> str:
    grants = api.VideoGrants(
        room_join=True, room=room, agent=True, can_publish=True, can_subscribe=True,
        can_publish_data=True,
    )
    return (
        api.AccessToken(settings.api_key, settings.api_secret)
        .with_identity(settings.identity)
        .with_name(settings.name)
        .with_kind("agent")
        .with_grants(grants)
        .to_jwt()
    )


def is_caller(p: rtc.RemoteParticipant) -> bool:
    return p.kind in _CALLER_KINDS


class RoomAgent:
    def __init__(
        self, bus: Bus, settings: BridgeSettings, name: str,
        *, on_gone: Callable[[RoomAgent], None] | None = None, region: str = "",
        agent: str = "", livekit: Callable[[], api.LiveKitAPI] | None = None,
        region_callers: Callable[[str], int] | None = None,
    ) -> None:
        self.bus = bus
        self.s = settings
        #: Where the room's sessions live (``bus`` is that region's connection).
        self.region = region or settings.region
        #: The agent the room's callers talk to, chosen at dispatch ("": the LLM's default).
        self.agent = agent
        self.name = name
        self.room = rtc.Room()
        self.sessions: dict[str, CallerSession] = {}
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.timings: dict[str, float] = {}
        self.log = log.bind(pii={"room": name})
        self._on_gone = on_gone
        #: Callers the bridge holds in a region, all rooms together (``max_sessions``).
        self._region_callers = region_callers or (lambda _region: len(self.sessions))
        #: The agent's hand on its callers' calls (hang up, transfer); None: it has none.
        self.calls = RoomCalls(name, livekit) if livekit is not None else None
        self._tasks = TaskSet(f"room-{name}")
        # Only the closing task: it outlives _tasks, which it closes, and close() awaits it.
        self._lifecycle = TaskSet(f"room-close-{name}")
        self._source: rtc.AudioSource | None = None
        self._track: rtc.LocalAudioTrack | None = None
        self._track_sid = ""
        self._playout: Playout | None = None
        self._playout_task: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._closer: asyncio.Task[None] | None = None
        self._ending: set[asyncio.Task[Any]] = set()

    @property
    def playout(self) -> Playout:
        assert self._playout is not None, "room not joined"
        return self._playout

    # ---- joining ------------------------------------------------------------------------------

    async def join(self) -> None:
        t0 = time.perf_counter()
        r = self.room
        r.on("participant_connected", self._on_participant_connected)
        r.on("participant_disconnected", self._on_participant_disconnected)
        r.on("track_subscribed", self._on_track_subscribed)
        r.on("track_unsubscribed", self._on_track_unsubscribed)
        r.on("disconnected", self._on_disconnected)
        r.on("sip_dtmf_received", self._on_dtmf)
        r.on("reconnecting", lambda: self.log.warning("room_reconnecting"))
        r.on("reconnected", lambda: self.log.info("room_reconnected"))
        await r.connect(
            self.s.livekit_url, agent_token(self.s, self.name),
            rtc.RoomOptions(auto_subscribe=True, connect_timeout=self.s.connect_timeout_s),
        )
        self.timings["connect_s"] = time.perf_counter() - t0
        self._source = rtc.AudioSource(
            self.s.output_sample_rate_hz, 1, queue_size_ms=self.s.queue_size_ms
        )
        frame_s = self.s.frame_ms / 1000
        self._playout = Playout(
            self._source, room=self.name,
            max_pending_frames=max(1, int(self.s.max_pending_s / frame_s)),
            on_started=self._frame_started, on_finished=self._frame_finished,
        )
        self._playout_task = self._tasks.spawn(self._playout.run(), name=f"playout-{self.name}")
        self._track = rtc.LocalAudioTrack.create_audio_track("agent-voice", self._source)
        pub = await r.local_participant.publish_track(
            self._track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        )
        self._track_sid = pub.sid
        self.timings["join_s"] = time.perf_counter() - t0
        self.log.info("room_joined", connect_ms=round(self.timings["connect_s"] * 1000, 1),
                      join_ms=round(self.timings["join_s"] * 1000, 1), track=pub.sid)
        for p in list(r.remote_participants.values()):
            self._on_participant_connected(p)
            for tp in p.track_publications.values():
                if tp.track is not None and tp.subscribed:
                    self._on_track_subscribed(tp.track, tp, p)
        self._check_idle()

    def _link(self) -> RoomLink:
        return RoomLink(
            bus=self.bus, settings=self.s, region=self.region, room_name=self.name,
            room=self.room, agent=self.agent,
            playout=self.playout, agent_track_sid=lambda: self._track_sid,
            calls=self.calls,
        )

    # ---- room events (sync callbacks: the work goes into owned tasks) -------------------------

    def _on_participant_connected(self, p: rtc.RemoteParticipant) -> None:
        if not is_caller(p) or p.identity in self.sessions or self.closed.is_set():
            return
        if (n := self.s.max_callers_per_room) and len(self.sessions) >= n:
            self._refuse(p, "room_full", f"the room has {n} callers already "
                                         "(BRIDGE_MAX_CALLERS_PER_ROOM)")
            return
        if (n := self.s.max_sessions) and self._region_callers(self.region) >= n:
            self._refuse(p, "region_full", f"this bridge holds {n} callers in region "
                                           f"{self.region} already (BRIDGE_MAX_SESSIONS)")
            return
        sess = CallerSession(self._link(), p)
        self.sessions[p.identity] = sess
        self._tasks.spawn(sess.start(), name=f"start-{sess.id}")
        self._check_idle()

    def _refuse(self, p: rtc.RemoteParticipant, code: str, why: str) -> None:
        """A caller over a limit: not heard, no session opened; an error event (under the id
        their session would have had) and a log line say so."""
        sid = caller_session_id(self.s, self.name, p.identity, p.sid)
        self.log.warning("caller_refused", code=code, session=sid, reason=why)
        self._tasks.spawn(self.bus.publish_error(self.region, sid, turn=0, code=code,
                                                 message=why, stage="bridge"),
                          name=f"refuse-{sid}")

    def _on_participant_disconnected(self, p: rtc.RemoteParticipant) -> None:
        sess = self.sessions.pop(p.identity, None)
        if sess is None:
            return
        self.log.info("caller_left", session=sess.id, reason=int(p.disconnect_reason or 0))
        # A deleted room takes its participants with it, sometimes before our own disconnect
        # event arrives: their sessions end because the room closed, not because they left.
        why = "room_closed" if p.disconnect_reason in _CLOSED else "participant_left"
        task = self._tasks.spawn(sess.end(why), name=f"end-{sess.id}")
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)
        self._check_idle()

    def _on_dtmf(self, dtmf: rtc.SipDTMF) -> None:
        """A phone caller pressed a key (livekit-sip sends RFC 4733 events as SIP DTMF)."""
        who = dtmf.participant.identity if dtmf.participant is not None else ""
        session = self.sessions.get(who)
        if session is None or not dtmf.digit:
            return
        session.log.info("key_pressed", pii={"key": dtmf.digit})
        session.mic.press(dtmf.digit)

    def _on_track_subscribed(
        self, track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant
    ) -> None:
        if track.kind != rtc.TrackKind.KIND_AUDIO:
            return
        if pub.source == rtc.TrackSource.SOURCE_SCREENSHARE_AUDIO:
            return
        sess = self.sessions.get(p.identity)
        if sess is not None:
            sess.attach_track(track)

    def _on_track_unsubscribed(
        self, track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant
    ) -> None:
        sess = self.sessions.get(p.identity)
        if sess is not None:
            sess.detach_track(track)

    def _on_disconnected(self, reason: Any) -> None:
        if self.closed.is_set():
            return
        why = "room_closed" if reason in _CLOSED else f"disconnected:{_reason_name(reason)}"
        self.log.warning("room_disconnected", reason=why)
        self._close_soon(why)

    # ---- playout hooks ------------------------------------------------------------------------

    def _session(self, session_id: str) -> CallerSession | None:
        for s in self.sessions.values():
            if s.id == session_id:
                return s
        return None

    def _frame_started(self, f: AgentFrame) -> None:
        s = self._session(f.session)
        if s is not None:
            s.frame_started(f)

    def _frame_finished(self, f: AgentFrame) -> None:
        s = self._session(f.session)
        if s is not None:
            s.frame_finished(f)

    # ---- leaving ------------------------------------------------------------------------------

    def _check_idle(self) -> None:
        """Leave a room that has had no caller for ``idle_leave_s``."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self.sessions or self.closed.is_set() or self.s.idle_leave_s <= 0:
            return
        self._idle = asyncio.get_running_loop().call_later(
            self.s.idle_leave_s, self._close_soon, "idle"
        )

    def _close_soon(self, reason: str) -> None:
        if self._closer is None:
            self._closer = self._lifecycle.spawn(self._close(reason), name=f"close-{self.name}")

    async def close(self, reason: str = "agent_left") -> None:
        """End every session, then leave the room. Idempotent: a second call waits for the
        first one to finish."""
        self._close_soon(reason)
        assert self._closer is not None
        if self._closer is not asyncio.current_task():
            await asyncio.shield(self._closer)

    async def _close(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self.close_reason = reason
        if self._idle is not None:
            self._idle.cancel()
        sessions, self.sessions = list(self.sessions.values()), {}
        await asyncio.gather(*(s.end(reason) for s in sessions), return_exceptions=True)
        if self._playout is not None:
            self._playout.close()
        await cancel_and_wait(self._playout_task)
        try:
            async with asyncio.timeout(5.0):
                await self.room.disconnect()
        except Exception as e:  # noqa: BLE001 - leaving must finish
            self.log.warning("room_disconnect_failed", error=repr(e))
        if self._source is not None:
            await self._source.aclose()
        self.log.info("room_left", reason=reason, sessions=len(sessions))
        if self._on_gone is not None:
            self._on_gone(self)
        # Sessions that were already ending (their callers left) finish, then the rest stops.
        ending = [t for t in self._ending if not t.done()]
        if ending:
            await asyncio.wait(ending, timeout=CTL_RETRY_S + 5)
        await self._tasks.close()


def _reason_name(reason: Any) -> str:
    try:
        return str(rtc.DisconnectReason.Name(reason))
    except (ValueError, TypeError):
        return str(reason)
