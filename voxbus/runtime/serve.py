"""Run one stage as a worker process: connect, provision if allowed, work until SIGTERM, drain.

A process of several regions whose servers differ (``NATS_URL_<REGION>``, a supercluster) holds
one connection per region, to that region's own servers, and one worker on each: a region's
messages never travel through another region's servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable

import structlog

from voxbus.runtime import health, metrics, tracing
from voxbus.runtime.bus import Bus
from voxbus.runtime.settings import BusSettings, SettingsError
from voxbus.runtime.stage import Stage
from voxbus.runtime.worker import Worker, WorkerOptions, worker_options_from_env

log = structlog.get_logger("voxbus.serve")


async def connect(settings: BusSettings, *, name: str) -> Bus:
    """One connection for every region of ``settings`` (they must share servers and identity:
    see ``connect_regions``)."""
    if len(settings.per_region()) > 1:
        raise SettingsError(f"regions {','.join(settings.regions)} have servers or identities "
                            "of their own: this command serves one region at a time")
    bus = await Bus.connect(
        settings.url, regions=list(settings.regions), partitions=settings.partitions, name=name,
        user=settings.user, password=settings.password, inbox_prefix=settings.inbox_prefix,
        replicas=settings.replicas, seal=settings.seal,
    )
    bus.may_provision = settings.identity is None or settings.identity.role == "operator"
    if bus.clustered and (cluster := bus.nc._server_info.get("cluster")) not in bus.regions:
        log.warning("connected_outside_region", cluster=cluster, regions=bus.regions,
                    note="NATS_URL should name this region's own servers")
    return bus


async def connect_regions(settings: BusSettings, *, name: str) -> list[Bus]:
    """One connection per group of regions sharing servers and identity."""
    buses: list[Bus] = []
    try:
        for part in settings.per_region():
            buses.append(await connect(part, name=name))
    except BaseException:
        await asyncio.gather(*(b.close() for b in buses), return_exceptions=True)
        raise
    return buses


async def serve(stage: Stage, settings: BusSettings, opts: WorkerOptions | None = None, *,
                before: Callable[[Bus], Awaitable[None]] | None = None) -> None:
    """Run ``stage`` until SIGTERM or SIGINT, then drain cleanly. ``before``: run on each
    region's connection before its worker starts."""
    tracing.configure_from_env(stage.name)
    opts = opts or worker_options_from_env()  # bad settings fail before connecting
    if (port := metrics.serve_from_env()) is not None:
        log.info("metrics_served", port=port, path="/metrics")
    settings.require_role(stage.name)
    probes = await serve_health()  # /livez answers from the start; /readyz once warm and leased
    buses = await connect_regions(settings, name=f"voxbus-{stage.name}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # one model, one worker per region: the stage starts once and stops after them all
    workers = [Worker(bus, stage, opts, owns_stage=False) for bus in buses]
    try:
        await stage.start()
        try:
            if before is not None:
                for bus in buses:
                    await before(bus)
            for w in workers:
                await w.start()
            if probes is not None:
                probes.started = True
            await stop.wait()
        finally:
            await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
            await stage.stop()
    finally:
        for bus in buses:
            with contextlib.suppress(Exception):
                await bus.close()
        if probes is not None:
            await probes.close()


async def serve_health() -> health.HealthServer | None:
    """The probes' endpoint on ``VOXBUS_HEALTH_PORT``, when it is set."""
    port = health.port_from_env()
    if port is None:
        return None
    server = await health.HealthServer().start(
        port, os.environ.get("VOXBUS_HEALTH_HOST", "") or "0.0.0.0")
    log.info("health_served", port=port, paths=["/livez", "/readyz"])
    return server
