"""``voxbus dispatch <room> [--agent NAME]``: ask a running bridge (over NATS) to send the agent
into a room. Prints the bridge's answer (one JSON line); exits 1 when it refused (the answer's
``error`` says why in one line) or none came."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import msgspec
import nats
import nats.errors

from voxbus.contracts.control import (
    DispatchReply,
    DispatchRequest,
    decode_dispatch_reply,
    dispatch_subject,
    encode_json,
)
from voxbus.runtime.bus import server_urls
from voxbus.runtime.settings import BusSettings
from voxbus.services.bridge.settings import BridgeSettings


async def ask_bridge(subject: str, payload: bytes, *, nats_url: str, timeout_s: float,
                     user: str | None = None, password: str | None = None,
                     inbox_prefix: str | None = None) -> bytes | str:
    """A bridge's answer to a request on ``subject``, or one line saying why there was none."""
    async def quiet(e: Exception) -> None:  # the answer below says what went wrong
        return None

    try:
        nc = await nats.connect(server_urls(nats_url), user=user, password=password,
                                name="voxbus-dispatch",
                                inbox_prefix=inbox_prefix or "_INBOX", max_reconnect_attempts=1,
                                connect_timeout=2, error_cb=quiet)
    except (OSError, nats.errors.Error) as e:
        return f"cannot reach NATS at {nats_url}: {e!r}"
    try:
        return bytes((await nc.request(subject, payload, timeout=timeout_s)).data)
    except nats.errors.NoRespondersError:
        return "no bridge is running for this region"
    except nats.errors.TimeoutError:
        return f"no answer in {timeout_s} s"
    finally:
        await nc.close()


async def request_dispatch(
    room: str, *, nats_url: str, region: str, timeout_s: float = 15.0,
    user: str | None = None, password: str | None = None, inbox_prefix: str | None = None,
    explicit: bool = True, agent: str = "",
) -> DispatchReply:
    """The bridge's answer, or an ``ok=False`` reply saying why there was none. The request
    goes to ``region``'s bridges; with ``explicit`` the room's sessions are to live in
    ``region``, else the bridge chooses (the room's metadata, its region map, its default).
    ``agent``: the agent the room's callers talk to (empty: the bridge chooses, from the room's
    metadata or LiveKit's agent dispatch, else the default; ``services.bridge.agents``)."""
    answer = await ask_bridge(
        dispatch_subject(region),
        encode_json(DispatchRequest(room=room, region=region if explicit else "", agent=agent)),
        nats_url=nats_url, timeout_s=timeout_s, user=user, password=password,
        inbox_prefix=inbox_prefix)
    if isinstance(answer, str):
        return DispatchReply(ok=False, room=room, error=answer)
    try:
        return decode_dispatch_reply(answer)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        return DispatchReply(ok=False, room=room, error=f"unreadable answer: {e}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voxbus dispatch", description=__doc__)
    p.add_argument("room")
    p.add_argument("--region", help="the region the room's sessions live in (default: the "
                   "bridge chooses from the room's metadata, its region map or BRIDGE_REGION)")
    p.add_argument("--agent", default="", help="the agent the room's callers talk to, as "
                   "published in the region (default: the room's metadata {\"agent\": ...}, "
                   "else LiveKit's agent dispatch for the room, else the LLM's default)")
    p.add_argument("--timeout", type=float, default=15.0)
    rest = list(sys.argv[1:] if argv is None else argv)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    args = p.parse_args(rest)
    settings = BusSettings.from_env()
    settings.require_role("operator")
    region = args.region or BridgeSettings.from_env().region
    bus = settings.for_region(region) if region in settings.regions else settings
    answer = asyncio.run(request_dispatch(
        args.room, nats_url=bus.url, region=region, timeout_s=args.timeout,
        user=bus.user, password=bus.password, inbox_prefix=bus.inbox_prefix,
        explicit=args.region is not None, agent=args.agent,
    ))
    print(encode_json(answer).decode())
    return 0 if answer.ok else 1


if __name__ == "__main__":
    sys.exit(main())
