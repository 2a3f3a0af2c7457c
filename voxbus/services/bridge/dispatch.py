"""``voxbus dispatch <room>``: ask a running bridge (over NATS) to send the agent into a room."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

import nats
import nats.errors

from voxbus.runtime.settings import BusSettings
from voxbus.services.bridge.bridge import dispatch_subject
from voxbus.services.bridge.settings import BridgeSettings


async def request_dispatch(
    room: str, *, nats_url: str, region: str, timeout_s: float = 15.0,
    user: str | None = None, password: str | None = None,
) -> dict[str, Any]:
    """The bridge's answer: ``{"ok": true, "room": ..., "ms": ...}`` or ``{"ok": false, ...}``."""
    async def quiet(e: Exception) -> None:  # the answer below says what went wrong
        return None

    try:
        nc = await nats.connect(nats_url, user=user, password=password, name="voxbus-dispatch",
                                max_reconnect_attempts=1,
                                connect_timeout=2, error_cb=quiet)
    except (OSError, nats.errors.Error) as e:
        return {"ok": False, "room": room, "error": f"cannot reach NATS at {nats_url}: {e!r}"}
    try:
        reply = await nc.request(
            dispatch_subject(region), json.dumps({"room": room}).encode(), timeout=timeout_s
        )
        answer: dict[str, Any] = json.loads(reply.data)
        return answer
    except nats.errors.NoRespondersError:
        return {"ok": False, "room": room, "error": "no bridge is running for this region"}
    except nats.errors.TimeoutError:
        return {"ok": False, "room": room, "error": f"no answer in {timeout_s} s"}
    finally:
        await nc.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voxbus dispatch", description=__doc__)
    p.add_argument("room")
    p.add_argument("--region", help="default: BRIDGE_REGION")
    p.add_argument("--timeout", type=float, default=15.0)
    rest = list(sys.argv[1:] if argv is None else argv)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    args = p.parse_args(rest)
    bus = BusSettings.from_env()
    region = args.region or BridgeSettings.from_env().region
    answer = asyncio.run(request_dispatch(
        args.room, nats_url=bus.url, region=region, timeout_s=args.timeout,
        user=bus.user, password=bus.password,
    ))
    print(json.dumps(answer))
    return 0 if answer.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
