"""``voxbus web``: the page people talk to the agent from, and the tokens it joins with.

Serves ``static/`` (``index.html``, and ``app.js``: livekit-client bundled by esbuild at setup,
``./dev setup``; nothing is fetched at run time), ``GET /agents``: the agents published in the
region (the page's picker), and ``GET /token?room=R&agent=A``: a LiveKit token for a fresh
caller identity in room ``R``, minted with the bridge's API key (``BRIDGE_API_KEY``/
``BRIDGE_API_SECRET``), after sending agent ``A`` (empty: the bridge chooses) into the room (a
dispatch request to the region's bridge over NATS). A tiny asyncio HTTP/1.1 server: GET only, one
request per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import secrets
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import structlog
from livekit import api

from voxbus.contracts.agents import valid_name
from voxbus.runtime.settings import BusSettings, SettingsError
from voxbus.services.bridge.settings import BridgeSettings

log = structlog.get_logger("voxbus.web")
STATIC = Path(__file__).with_name("static")
ROOM_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8"}

#: Sends an agent (by name; "": the bridge chooses) into a room; returns an error text, or ""
#: when the agent is there.
Dispatch = Callable[[str, str], Awaitable[str]]
#: The names of the agents published in the region.
ListAgents = Callable[[], Awaitable[list[str]]]


def check_bundle() -> None:
    if not (STATIC / "app.js").is_file():
        raise SettingsError("the page's script is not built (voxbus/web/static/app.js): run "
                            "./dev setup (it bundles livekit-client with esbuild)")


@dataclass
class WebApp:
    livekit_url: str  # what the browser connects to
    api_key: str
    api_secret: str
    dispatch: Dispatch
    agents: ListAgents | None = None

    def token(self, room: str) -> tuple[int, dict[str, str]]:
        identity = f"web-{secrets.token_hex(4)}"
        jwt = (api.AccessToken(self.api_key, self.api_secret).with_identity(identity)
               .with_grants(api.VideoGrants(room_join=True, room=room)).to_jwt())
        return 200, {"url": self.livekit_url, "token": jwt, "room": room, "identity": identity}

    async def route(self, target: str) -> tuple[int, str, bytes]:
        parts = urlsplit(target)
        if parts.path == "/agents":
            try:
                names = await self.agents() if self.agents is not None else []
            except Exception as e:  # noqa: BLE001 - the page still joins the default agent
                log.warning("agents_not_listed", error=repr(e))
                names = []
            return _json(200, {"agents": names})
        if parts.path == "/token":
            query = parse_qs(parts.query)
            room = (query.get("room") or ["web"])[0]
            agent = (query.get("agent") or [""])[0]
            if not ROOM_RE.match(room):
                return _json(400, {"error": "a room name is 1-64 of [A-Za-z0-9_-]"})
            if agent and not valid_name(agent):
                return _json(400, {"error": "an agent name is 1-48 of [a-z0-9_], from a letter"})
            if error := await self.dispatch(room, agent):
                return _json(503, {"error": f"the agent could not join: {error}"})
            return _json(*self.token(room))
        name = "index.html" if parts.path in ("/", "") else parts.path.lstrip("/")
        path = STATIC / name
        if "/" in name or not path.is_file() or path.suffix not in TYPES:
            return 404, "text/plain", b"not found\n"
        return 200, TYPES[path.suffix], path.read_bytes()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(30):
                head = await reader.readuntil(b"\r\n\r\n")
                method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
                if method != "GET":
                    status, ctype, body = 405, "text/plain", b"GET only\n"
                else:
                    status, ctype, body = await self.route(target)
                writer.write(
                    f"HTTP/1.1 {status} {_REASON.get(status, 'OK')}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                    "Connection: close\r\n\r\n".encode() + body)
                await writer.drain()
        except (TimeoutError, ValueError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self.handle, host, port)


_REASON = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           503: "Service Unavailable"}


def _json(status: int, value: Mapping[str, object]) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(value).encode()


def nats_dispatch(bus: BusSettings, region: str) -> Dispatch:
    from voxbus.services.bridge.dispatch import request_dispatch

    own = bus.for_region(region) if region in bus.regions else bus

    async def dispatch(room: str, agent: str) -> str:  # the bridge chooses the room's region
        reply = await request_dispatch(room, nats_url=own.url, region=region, user=own.user,
                                       password=own.password, inbox_prefix=own.inbox_prefix,
                                       explicit=False, agent=agent)
        return "" if reply.ok else reply.error

    return dispatch


def nats_agents(bus: BusSettings, region: str) -> ListAgents:
    """The agents published in ``region`` (a connection per request, as for dispatch)."""
    import nats

    from voxbus.runtime.bus import server_urls
    from voxbus.services.bridge.agents import published_agents

    own = bus.for_region(region) if region in bus.regions else bus

    async def agents() -> list[str]:
        nc = await nats.connect(server_urls(own.url), user=own.user, password=own.password,
                                name="voxbus-web", inbox_prefix=own.inbox_prefix or "_INBOX",
                                max_reconnect_attempts=1, connect_timeout=2)
        try:
            return await published_agents(nc.jetstream(), region)
        finally:
            await nc.close()

    return agents


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="voxbus web", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--public-livekit-url", default="",
                    help="the LiveKit URL the browser connects to (default: BRIDGE_LIVEKIT_URL)")
    args = ap.parse_args(argv)
    check_bundle()
    bridge = BridgeSettings.from_env()
    bridge.require_credentials()
    bus = BusSettings.from_env()
    app = WebApp(args.public_livekit_url or bridge.livekit_url, bridge.api_key,
                 bridge.api_secret, nats_dispatch(bus, bridge.region),
                 nats_agents(bus, bridge.region))

    async def run() -> None:
        server = await app.serve(args.host, args.port)
        print(f"voxbus web: http://{args.host}:{args.port}/", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            await stop.wait()

    try:
        asyncio.run(run())
    except OSError as e:
        raise SettingsError(f"cannot serve on {args.host}:{args.port}: {e.strerror or e}") from None
    return 0
