"""The agent calls someone: ``voxbus call SIP_URI --agent NAME`` asks a bridge (``CallRequest``
on ``call_subject``), which joins a new room with the agent, has LiveKit's SIP service call the
number into it (an outbound trunk per host, made once) and answers when the phone is answered
or the call failed. The callee becomes a caller of the room like any other (the agent's greeting
is said as they join); a failed call leaves nothing behind (the room is closed) and is told
twice: in the answer, and as an ``ErrorEvent`` (``call_busy``, ``call_rejected``...) on the
region's bus.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

import structlog
from google.protobuf.duration_pb2 import Duration
from livekit import api

from voxbus.contracts.control import CallReply, CallRequest, CallStatus
from voxbus.runtime.bus import Bus
from voxbus.services.bridge.room import RoomAgent
from voxbus.services.bridge.session import caller_session_id
from voxbus.services.bridge.settings import BridgeSettings

log = structlog.get_logger("voxbus.bridge.dial")

#: Names of the outbound trunks the bridge makes (one per SIP host).
TRUNK_PREFIX: Final = "voxbus:out:"
ROOM_PREFIX: Final = "call-out-"
_SIP_URI: Final = re.compile(r"^sips?:(?P<user>[^@\s;]+)@(?P<host>[^;\s>]+)$")
#: SIP answers to a call that did not connect, by what they mean to whoever asked.
_STATUS: Final[dict[int, CallStatus]] = {486: "busy", 600: "busy", 603: "rejected",
                                         403: "rejected", 480: "no_answer", 408: "no_answer",
                                         487: "no_answer"}


class Bridge(Protocol):
    """What placing a call needs of the bridge (``bridge.Bridge``)."""

    s: BridgeSettings

    @property
    def buses(self) -> Mapping[str, Bus]: ...

    def livekit_api(self) -> api.LiveKitAPI: ...

    async def dispatch(self, room: str, region: str = "", agent: str = "") -> RoomAgent: ...


class BadCallTarget(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    user: str
    host: str  # host[:port]

    @classmethod
    def parse(cls, uri: str) -> Target:
        m = _SIP_URI.match(uri.strip())
        if m is None:
            raise BadCallTarget(f"{uri!r} is not a SIP address (sip:user@host[:port])")
        return cls(m["user"], m["host"])


def failure(e: Exception) -> tuple[CallStatus, str]:
    """How a failed ``CreateSIPParticipant`` went, from LiveKit's error (the SIP answer code
    is in its message or metadata)."""
    text = str(getattr(e, "message", "") or e)
    code = (getattr(e, "metadata", None) or {}).get("sip_status_code", "")
    found = re.search(r"\b([3-6][0-9]{2})\b", f"{code} {text}")
    if found and int(found[1]) in _STATUS:
        return _STATUS[int(found[1])], text
    if "timeout" in text.lower() or "deadline" in text.lower():
        return "no_answer", text
    return "failed", text


async def outbound_trunk(lk: api.LiveKitAPI, host: str, from_number: str) -> str:
    """The id of the bridge's outbound trunk to ``host`` calling from ``from_number``."""
    name = f"{TRUNK_PREFIX}{host}:{from_number}"
    found = await lk.sip.list_outbound_trunk(api.ListSIPOutboundTrunkRequest())
    for t in found.items:
        if t.name == name:
            return str(t.sip_trunk_id)
    made = await lk.sip.create_outbound_trunk(api.CreateSIPOutboundTrunkRequest(
        trunk=api.SIPOutboundTrunkInfo(name=name, address=host, numbers=[from_number])))
    return str(made.sip_trunk_id)


async def place_call(bridge: Bridge, req: CallRequest) -> CallReply:
    t0 = time.perf_counter()
    try:
        target = Target.parse(req.to)
    except BadCallTarget as e:
        return CallReply(ok=False, error=str(e))
    lk = bridge.livekit_api()
    room = f"{ROOM_PREFIX}{secrets.token_hex(6)}"
    from_number = req.from_number or bridge.s.caller_id
    trunk = await outbound_trunk(lk, target.host, from_number)
    agent = await bridge.dispatch(room, req.region, req.agent)  # in the room before it rings
    identity = f"sip_{target.user}"
    try:
        await lk.sip.create_sip_participant(api.CreateSIPParticipantRequest(
            sip_trunk_id=trunk, sip_call_to=target.user, room_name=room,
            participant_identity=identity, wait_until_answered=True,
            ringing_timeout=Duration(seconds=int(req.ring_s))))
    except Exception as e:  # noqa: BLE001 - every failure is an answer and an event
        status, why = failure(e)
        await agent.close(f"call_{status}")
        try:
            await lk.room.delete_room(api.DeleteRoomRequest(room=room))
        except Exception as gone:  # noqa: BLE001 - it may be gone already
            log.debug("room_delete_failed", error=repr(gone))
        sid = caller_session_id(bridge.s, room, identity)
        log.warning("call_failed", status=status, session=sid, pii={"to": req.to, "why": why})
        await bridge.buses[agent.region].publish_error(
            agent.region, sid, turn=0, code=f"call_{status}", stage="bridge",
            message=f"the call was not answered: {status}")
        return CallReply(ok=False, status=status, room=room, error=f"{status}: {why}",
                         ms=round((time.perf_counter() - t0) * 1000, 1))
    session = ""
    for _ in range(100):  # the callee's session starts as their track arrives
        if (s := agent.sessions.get(identity)) is not None:
            session = s.id
            break
        await asyncio.sleep(0.05)
    log.info("call_answered", session=session, pii={"to": req.to})
    return CallReply(ok=True, status="answered", room=room, session=session,
                     ms=round((time.perf_counter() - t0) * 1000, 1))
