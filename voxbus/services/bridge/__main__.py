"""``voxbus bridge [ROOM...]``: run the LiveKit bridge (``BRIDGE_*`` and bus settings from the
environment), joining the given rooms at once and any other on dispatch or auto-join."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence

import structlog

from voxbus.runtime import health, metrics
from voxbus.runtime import logging as vlog
from voxbus.runtime.serve import connect_regions, serve_health
from voxbus.runtime.settings import BusSettings
from voxbus.services.bridge.bridge import Bridge
from voxbus.services.bridge.settings import BridgeSettings

log = structlog.get_logger("voxbus.bridge")


async def run(settings: BridgeSettings, bus_settings: BusSettings, rooms: list[str]) -> None:
    """One connection per region (to its own servers), one bridge for all of them."""
    probes = await serve_health()
    buses = await connect_regions(bus_settings, name="voxbus-bridge")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bridge = Bridge({r: b for b in buses for r in b.regions}, settings)
    unwatch = health.watch("bridge", ready=bridge.readiness)
    try:
        await bridge.start()
        if probes is not None:
            probes.started = True
        for r in rooms:
            await bridge.dispatch(r)
        await stop.wait()
    finally:
        unwatch()
        await bridge.close()
        for bus in buses:
            await bus.close()
        if probes is not None:
            await probes.close()


def main(argv: Sequence[str] | None = None) -> int:
    vlog.configure()
    rooms = list(sys.argv[1:] if argv is None else argv)
    settings = BridgeSettings.from_env()
    settings.require_credentials()  # before connecting anywhere
    bus = BusSettings.from_env()
    bus.require_role("bridge")
    if (port := metrics.serve_from_env()) is not None:
        log.info("metrics_served", port=port, path="/metrics")
    asyncio.run(run(settings, bus, rooms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
