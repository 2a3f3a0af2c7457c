"""Wire facts outside the session message union: the bridge's dispatch request and answer, the
header that picks a reply's voice, and what stages keep in a region's state bucket.

Dispatch and state values are JSON (an operator's shell or another language can speak them);
the structs below are their schema. The evolution rules of ``messages`` apply: new fields get
defaults, a field's meaning never changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Final, Literal

import msgspec

from voxbus.contracts.subjects import PREFIX, check_region, check_session

# ---- dispatch: send the agent into a LiveKit room ------------------------------------------

#: Queue group of the dispatch subject: one bridge replica answers each request.
DISPATCH_QUEUE: Final = "voxbus-bridge"


def dispatch_subject(region: str) -> str:
    """``voxbus.<region>._bridge.bridge.dispatch``: inside the stage identity's permissions
    (``voxbus.<region>.*.*.*``) and outside every stream's subjects, so no stream stores it."""
    return f"{PREFIX}.{check_region(region)}._bridge.bridge.dispatch"


RoomName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class DispatchRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Request on ``dispatch_subject(region)``: join ``room``; its sessions live in ``region``
    (empty: the bridge chooses, from the room's metadata, its region map or its default)."""

    room: RoomName
    region: str = ""
    #: The agent the room's callers talk to ("": the room's metadata, else the default agent).
    agent: str = ""


class DispatchReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The bridge's answer: ``ok`` with the sessions it runs in the room, or ``error``."""

    ok: bool
    room: str = ""
    #: The region the room's sessions live in.
    region: str = ""
    sessions: list[str] = msgspec.field(default_factory=list)
    ms: float = 0.0
    error: str = ""
    agent: str = ""


def encode_json(value: msgspec.Struct) -> bytes:
    return msgspec.json.encode(value)


def decode_dispatch_request(data: bytes) -> DispatchRequest:
    """Raises ``msgspec.ValidationError`` / ``msgspec.DecodeError`` on a bad request."""
    return msgspec.json.decode(data, type=DispatchRequest)


def decode_dispatch_reply(data: bytes) -> DispatchReply:
    return msgspec.json.decode(data, type=DispatchReply)


def call_subject(region: str) -> str:
    """``voxbus.<region>._bridge.bridge.call``: ask a bridge to place a phone call (like
    ``dispatch_subject``, outside every stream)."""
    return f"{PREFIX}.{check_region(region)}._bridge.bridge.call"


#: How a call placed by the agent went.
CallStatus = Literal["answered", "busy", "rejected", "no_answer", "failed"]


class CallRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Request on ``call_subject(region)``: call ``to`` (``sip:user@host[:port]``) from a new
    room whose agent is ``agent``; the bridge answers once the call is answered or failed."""

    to: Annotated[str, msgspec.Meta(min_length=5, max_length=256)]
    agent: str = ""
    #: Where the call's session lives ("": the bridge's default region).
    region: str = ""
    #: The number the call comes from (the caller id the phone shows).
    from_number: Annotated[str, msgspec.Meta(max_length=32)] = ""
    #: How long the phone may ring.
    ring_s: Annotated[float, msgspec.Meta(gt=0, le=120)] = 30.0


class CallReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``ok``: answered, the agent is talking in ``room`` (session ``session``); else
    ``status`` says how it failed and ``error`` why, in one line."""

    ok: bool
    status: CallStatus = "failed"
    room: str = ""
    session: str = ""
    error: str = ""
    ms: float = 0.0


def decode_call_request(data: bytes) -> CallRequest:
    """Raises ``msgspec.ValidationError`` / ``msgspec.DecodeError`` on a bad request."""
    return msgspec.json.decode(data, type=CallRequest)


def decode_call_reply(data: bytes) -> CallReply:
    return msgspec.json.decode(data, type=CallReply)


# ---- headers ---------------------------------------------------------------------------------

#: On the first ``ReplyText`` of a reply: the TTS voice to speak it with (case-insensitive name).
VOICE_HEADER: Final = "Voxbus-Voice"


def header(headers: Mapping[str, str] | None, name: str) -> str:
    """A header's value by case-insensitive name ("" when absent)."""
    wanted = name.lower()
    for key, value in (headers or {}).items():
        if key.lower() == wanted:
            return value.strip()
    return ""


# ---- the state bucket ----------------------------------------------------------------------


def state_key(session: str, owner: str) -> str:
    """``<session>.<owner>``: every key of a session shares the ``<session>.`` prefix, so a purge
    of ``<session>.>`` erases them all."""
    return f"{check_session(session)}.{owner}"


class TurnStart(msgspec.Struct, frozen=True, array_like=True):
    """A turn and the audio frame (``AudioIn.seq``) its speech started at."""

    turn: Annotated[int, msgspec.Meta(ge=0)]
    frame: Annotated[int, msgspec.Meta(ge=0)]


class SttTurnState(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``<session>.stt``: the session's last user turn, so a replica that takes the session over
    never reuses a turn number; and where the last few turns started, so a replica that replays
    the frames of a turn it did not see closed (its previous owner died) gives that turn the
    same number (and the outputs it makes again the same ids)."""

    turn: Annotated[int, msgspec.Meta(ge=0)]
    starts: list[TurnStart] = msgspec.field(default_factory=list)


STT_STATE: Final = "stt"
LLM_STATE: Final = "llm"
#: ``<session>.interrupted``: the session's highest interrupted turn (an ASCII integer), so a
#: replica that takes the session over drops the outputs of those turns too.
INTERRUPTED_STATE: Final = "interrupted"
def tombstone_key(session: str) -> str:
    """``purged/<session>`` in the state bucket: the session was purged. A tombstone, outside
    the ``<session>.`` keys a purge erases (no session id has a ``/``), kept as long as the bucket
    keeps entries: workers drop the session's messages and publish nothing more for it."""
    return f"purged/{check_session(session)}"


#: ``<session>.caller``: the room and caller behind an opaque session id (JSON, written by the
#: bridge), so an operator can find a caller's session; erased with the session by a purge.
CALLER_STATE: Final = "caller"


def decode_stt_state(data: bytes) -> SttTurnState:
    return msgspec.json.decode(data, type=SttTurnState)
