"""``voxbus call SIP_URI [--agent NAME]``: the agent calls someone. A running bridge of the region
joins a new room with the agent and has LiveKit's SIP service call ``SIP_URI`` into it; the agent
talks with whoever answers (its greeting first). Prints one line: ``answered`` with the room and
the session, or how it failed (``busy``, ``rejected``, ``no_answer``, ``failed``) and why; exits
1 when it failed. The bridge also publishes the failure as an error event in the region.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import msgspec

from voxbus.contracts.control import (
    CallReply,
    CallRequest,
    call_subject,
    decode_call_reply,
    encode_json,
)
from voxbus.runtime.settings import BusSettings
from voxbus.services.bridge.dial import BadCallTarget, Target
from voxbus.services.bridge.dispatch import ask_bridge
from voxbus.services.bridge.settings import BridgeSettings


async def request_call(req: CallRequest, *, bus: BusSettings, region: str,
                       timeout_s: float) -> CallReply:
    answer = await ask_bridge(call_subject(region), encode_json(req), nats_url=bus.url,
                              timeout_s=timeout_s, user=bus.user, password=bus.password,
                              inbox_prefix=bus.inbox_prefix)
    if isinstance(answer, str):
        return CallReply(ok=False, error=answer)
    try:
        return decode_call_reply(answer)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        return CallReply(ok=False, error=f"unreadable answer: {e}")


def describe(reply: CallReply) -> str:
    if reply.ok:
        return f"answered: room {reply.room}, session {reply.session} ({reply.ms:.0f} ms)"
    return reply.error if reply.error.startswith(f"{reply.status}:") else (
        f"{reply.status}: {reply.error or 'no reason given'}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voxbus call", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("to", help="who to call: sip:user@host[:port]")
    p.add_argument("--agent", default="", help="the agent that talks (published in the "
                   "region; default: the LLM's default)")
    p.add_argument("--region", help="where the call's session lives (default BRIDGE_REGION)")
    p.add_argument("--from", dest="from_number", default="",
                   help="the caller id the phone shows (default BRIDGE_CALLER_ID)")
    p.add_argument("--ring", type=float, default=30.0, help="seconds it may ring (default 30)")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        Target.parse(args.to)
    except BadCallTarget as e:
        p.error(str(e))
    settings = BusSettings.from_env()
    settings.require_role("operator")
    region = args.region or BridgeSettings.from_env().region
    bus = settings.for_region(region) if region in settings.regions else settings
    try:
        req = CallRequest(to=args.to, agent=args.agent, region=args.region or "",
                          from_number=args.from_number, ring_s=args.ring)
        msgspec.json.decode(encode_json(req), type=CallRequest)  # the bridge's own checks
    except msgspec.ValidationError as e:
        p.error(str(e))
    reply = asyncio.run(request_call(req, bus=bus, region=region, timeout_s=args.ring + 20))
    print(describe(reply), flush=True)
    return 0 if reply.ok else 1


if __name__ == "__main__":
    sys.exit(main())
