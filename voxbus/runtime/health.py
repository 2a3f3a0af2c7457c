"""``/livez`` and ``/readyz`` for a process's probes (``VOXBUS_HEALTH_PORT``), served by its
event loop, so an answer at all says the loop is not stuck.

- ``/livez``: 200 while every registered liveness check passes (a worker's lease loops have
  ticked lately: a loop that stopped ticking holds nothing and never will again).
- ``/readyz``: 200 once every registered readiness check passes (a worker: its model warm, its
  leases renewed lately, and a partition held unless there are more replicas than partitions).

Each failing check answers 503 with one line per reason. Checks are registered with ``watch``
and removed with the function it returns, as ``metrics.watch`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

import structlog

from voxbus.runtime.settings import SettingsError

log = structlog.get_logger("voxbus.health")

#: A check: ``None`` when fine, else why not (one line).
Check = Callable[[], str | None]

_live: dict[int, tuple[str, Check]] = {}
_ready: dict[int, tuple[str, Check]] = {}


def watch(name: str, *, live: Check | None = None, ready: Check | None = None
          ) -> Callable[[], None]:
    """Register ``name``'s checks until the returned function is called."""
    keys: list[tuple[dict[int, tuple[str, Check]], int]] = []
    for table, check in ((_live, live), (_ready, ready)):
        if check is not None:
            table[id(check)] = (name, check)
            keys.append((table, id(check)))

    def unwatch() -> None:
        for table, key in keys:
            table.pop(key, None)

    return unwatch


def failing(table: dict[int, tuple[str, Check]]) -> list[str]:
    reasons = []
    for name, check in list(table.values()):
        try:
            why = check()
        except Exception as e:  # noqa: BLE001 - a broken check is a failing one
            why = f"check failed: {e!r}"
        if why:
            reasons.append(f"{name}: {why}")
    return reasons


def answer(path: str, *, started: bool) -> tuple[int, str]:
    """The status and body for ``path``."""
    if path == "/livez":
        reasons = failing(_live)
    elif path == "/readyz":
        reasons = ([] if started else ["starting"]) + failing(_ready)
        if started and not _ready:
            reasons.append("no worker yet")
    else:
        return 404, "not found\n"
    return (503, "".join(f"{r}\n" for r in reasons)) if reasons else (200, "ok\n")


class HealthServer:
    """The HTTP endpoint; ``started`` is set by the process once it is up."""

    def __init__(self) -> None:
        self.started = False
        self._server: asyncio.Server | None = None

    async def start(self, port: int, host: str = "0.0.0.0") -> HealthServer:
        try:
            self._server = await asyncio.start_server(self._serve, host, port)
        except OSError as e:
            raise SettingsError(f"VOXBUS_HEALTH_PORT={port}: cannot serve on {host}:{port} "
                                f"({e.strerror or e})") from None
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                line = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # headers: nothing in them matters here
            parts = line.decode("latin-1").split()
            status, body = answer(parts[1] if len(parts) > 1 else "/", started=self.started)
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            data = body.encode()
            writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
                         f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                         + data)
            await writer.drain()
        except (TimeoutError, OSError, UnicodeError):
            pass
        finally:
            writer.close()


def port_from_env(environ: dict[str, str] | None = None) -> int | None:
    env = os.environ if environ is None else environ
    raw = env.get("VOXBUS_HEALTH_PORT", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise SettingsError(f"VOXBUS_HEALTH_PORT must be a port number (1-65535), got {raw!r}")
    return int(raw)
