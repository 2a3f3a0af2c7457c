"""Run one stage as a worker process: connect, provision if allowed, work until SIGTERM, drain."""

from __future__ import annotations

import asyncio
import signal

import structlog

from voxbus.runtime import metrics, tracing
from voxbus.runtime.bus import Bus
from voxbus.runtime.settings import BusSettings
from voxbus.runtime.stage import Stage
from voxbus.runtime.worker import Worker, WorkerOptions, worker_options_from_env

log = structlog.get_logger("voxbus.serve")


async def connect(settings: BusSettings, *, name: str) -> Bus:
    bus = await Bus.connect(
        settings.url, regions=list(settings.regions), partitions=settings.partitions, name=name,
        user=settings.user, password=settings.password, inbox_prefix=settings.inbox_prefix,
    )
    bus.may_provision = settings.identity is None or settings.identity.role == "operator"
    return bus


async def serve(stage: Stage, settings: BusSettings, opts: WorkerOptions | None = None) -> None:
    """Run ``stage`` until SIGTERM or SIGINT, then drain cleanly."""
    tracing.configure_from_env(stage.name)
    opts = opts or worker_options_from_env()  # bad settings fail before connecting
    if (port := metrics.serve_from_env()) is not None:
        log.info("metrics_served", port=port, path="/metrics")
    settings.require_role(stage.name)
    bus = await connect(settings, name=f"voxbus-{stage.name}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await Worker(bus, stage, opts or worker_options_from_env()).run_until(stop)
    finally:
        await bus.close()
