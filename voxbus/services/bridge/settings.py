"""Bridge settings from ``BRIDGE_*`` environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from voxbus.contracts.subjects import check_region
from voxbus.runtime.settings import Env, SettingsError
from voxbus.services.bridge.routing import RegionMapError, parse_region_map

_INPUT_RATES = (8_000, 16_000, 24_000, 48_000)


@dataclass(frozen=True, kw_only=True)
class BridgeSettings:
    #: The LiveKit signalling URL (``ws://`` or ``wss://``); the HTTP API is derived from it.
    livekit_url: str = "ws://127.0.0.1:7880"
    #: The LiveKit API key: no default (the dev harness passes its dev server's).
    api_key: str = ""
    #: The LiveKit API secret: no default (the dev harness passes its dev server's).
    api_secret: str = ""
    #: Keys the session ids (``BRIDGE_SESSION_KEY``; by default derived from the API secret):
    #: without it nobody can tell which room or caller a session id stands for.
    session_key: str = ""
    #: The agent's participant identity in every room it joins.
    identity: str = "voxbus-agent"
    #: The agent's participant name in every room it joins.
    name: str = "voxbus"
    #: Who the agent's phone calls come from (``voxbus call``): the caller id a phone shows.
    caller_id: str = "voxbus"
    #: Join every room that has a participant (found by polling the RoomService).
    auto_join: bool = False
    #: How often the RoomService is polled for rooms to join (with ``auto_join``).
    poll_s: float = 1.0
    #: The default region of a room (``routing``), served by this bridge.
    region: str = "local"
    #: ``BRIDGE_REGION_MAP``: ``country:DE=eu,node:lk-us-east=us`` (``routing``).
    region_map: Mapping[str, str] = field(default_factory=dict)
    #: The agent track's AudioSource queue: small, so barge-in and latency stay short.
    queue_size_ms: int = 100
    #: Rate of the AudioIn frames published to the bus (mono, 20 ms frames).
    input_sample_rate_hz: int = 16_000
    #: Rate of the agent's track; AudioOut frames at another rate are resampled.
    output_sample_rate_hz: int = 24_000
    #: Length of an audio frame: the caller's on the bus, and the unit of the agent's playout.
    frame_ms: int = 20
    #: Agent audio the bridge holds per room beyond the source queue (TTS runs ahead of playout).
    max_pending_s: float = 120.0
    #: A control message whose acknowledgement takes longer is sent again; so is a caller frame
    #: (and the ones after it: ``runtime.caller_audio``).
    publish_timeout_s: float = 1.0
    #: Caller audio held while its stream stores nothing (a leader election, a broken link),
    #: sent in order once it does; past this the oldest frames are dropped.
    audio_backlog_s: float = 10.0
    #: Subscriber frames the SDK may hold for the microphone pump before dropping the oldest.
    mic_queue_frames: int = 50
    #: Callers the agent takes in one room (0: any number); one more is not heard, and a
    #: ``room_full`` error event says so.
    max_callers_per_room: int = 16
    #: Callers this bridge takes in one region, all its rooms together (0: any number); one
    #: more is not heard (``region_full``).
    max_sessions: int = 500
    #: Send live captions of both sides into the room as text streams.
    captions: bool = True
    #: The text-stream topic of the captions (LiveKit's transcription topic).
    caption_topic: str = "lk.transcription"
    #: The longest wait to connect to a room.
    connect_timeout_s: float = 10.0
    #: Leave a room that has had no caller this long (0: stay).
    idle_leave_s: float = 30.0
    #: The caller starting to speak over a reply pauses it instead of cutting it: "mhm", "okay"
    #: or a cough let it play on where it paused; a word that is not a backchannel cuts it
    #: (``runtime.backchannel``). Off: any speech cuts the reply at once.
    backchannels: bool = True
    #: A paused reply plays on when no word came this long after the pause (a cough, a noise).
    backchannel_resume_s: float = 1.0

    @property
    def api_url(self) -> str:
        u = self.livekit_url
        if u.startswith("ws://"):
            return "http://" + u[len("ws://"):]
        if u.startswith("wss://"):
            return "https://" + u[len("wss://"):]
        return u

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BridgeSettings:
        env = Env("BRIDGE", environ)
        d = cls()
        try:
            region_map = parse_region_map(env.str("REGION_MAP", ""))
            region = check_region(env.str("REGION", d.region))
        except (RegionMapError, ValueError) as e:
            raise SettingsError(str(e)) from None
        s = cls(
            livekit_url=env.str("LIVEKIT_URL", d.livekit_url),
            api_key=env.str("API_KEY", d.api_key),
            api_secret=env.str("API_SECRET", d.api_secret),
            session_key=env.str("SESSION_KEY", d.session_key),
            caller_id=env.str("CALLER_ID", d.caller_id),
            identity=env.str("IDENTITY", d.identity),
            name=env.str("NAME", d.name),
            auto_join=env.bool("AUTO_JOIN", d.auto_join),
            poll_s=env.float("POLL_S", d.poll_s),
            region=region,
            region_map=region_map,
            queue_size_ms=env.int("QUEUE_SIZE_MS", d.queue_size_ms),
            input_sample_rate_hz=env.int("INPUT_SAMPLE_RATE_HZ", d.input_sample_rate_hz),
            output_sample_rate_hz=env.int("OUTPUT_SAMPLE_RATE_HZ", d.output_sample_rate_hz),
            max_pending_s=env.float("MAX_PENDING_S", d.max_pending_s),
            publish_timeout_s=env.float("PUBLISH_TIMEOUT_S", d.publish_timeout_s),
            audio_backlog_s=env.float("AUDIO_BACKLOG_S", d.audio_backlog_s),
            mic_queue_frames=env.int("MIC_QUEUE_FRAMES", d.mic_queue_frames),
            max_callers_per_room=env.int("MAX_CALLERS_PER_ROOM", d.max_callers_per_room),
            max_sessions=env.int("MAX_SESSIONS", d.max_sessions),
            captions=env.bool("CAPTIONS", d.captions),
            caption_topic=env.str("CAPTION_TOPIC", d.caption_topic),
            connect_timeout_s=env.float("CONNECT_TIMEOUT_S", d.connect_timeout_s),
            idle_leave_s=env.float("IDLE_LEAVE_S", d.idle_leave_s),
            backchannels=env.bool("BACKCHANNELS", d.backchannels),
            backchannel_resume_s=env.float("BACKCHANNEL_RESUME_S", d.backchannel_resume_s),
        )
        s.check()
        return s

    def require_credentials(self) -> None:
        """The bridge mints room tokens and calls the RoomService: it needs both."""
        if not self.api_key or not self.api_secret:
            raise SettingsError(
                "BRIDGE_API_KEY and BRIDGE_API_SECRET must be set (the LiveKit server's API key)"
            )

    def check(self) -> None:
        for name in ("input_sample_rate_hz", "output_sample_rate_hz"):
            if getattr(self, name) not in _INPUT_RATES:
                raise SettingsError(f"BRIDGE_{name.upper()} must be one of {_INPUT_RATES}")
        if not 10 <= self.queue_size_ms <= 1000:
            raise SettingsError("BRIDGE_QUEUE_SIZE_MS must be within 10..1000")
        if not self.livekit_url.startswith(("ws://", "wss://", "http://", "https://")):
            raise SettingsError(f"BRIDGE_LIVEKIT_URL={self.livekit_url!r} is not a ws(s) URL")
        if self.poll_s <= 0 or self.publish_timeout_s <= 0 or self.audio_backlog_s <= 0:
            raise SettingsError("BRIDGE_POLL_S, BRIDGE_PUBLISH_TIMEOUT_S and "
                                "BRIDGE_AUDIO_BACKLOG_S must be > 0")
        if self.max_callers_per_room < 0 or self.max_sessions < 0:
            raise SettingsError("BRIDGE_MAX_CALLERS_PER_ROOM and BRIDGE_MAX_SESSIONS must be "
                                ">= 0 (0: no limit)")
        if not 0 < self.backchannel_resume_s <= 10:
            raise SettingsError("BRIDGE_BACKCHANNEL_RESUME_S must be within 0..10 (seconds)")
