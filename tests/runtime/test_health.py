"""The probes' endpoint (``runtime.health``) on a real nats-server: ``/readyz`` says 503 until the
worker is started and holds its partitions, 200 then, 503 with the reason while nats-server is
frozen (its leases go unrenewed), 200 again after; ``/livez`` stays 200 throughout."""

from __future__ import annotations

import asyncio
import signal

from voxbus.ops.nats import EmbeddedNats
from voxbus.runtime import health
from voxbus.runtime.bus import Bus
from voxbus.runtime.echo import EchoStage
from voxbus.runtime.procs import free_port
from voxbus.runtime.testing import wait_until
from voxbus.runtime.worker import Worker


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def _until(port: int, path: str, status: int, timeout_s: float) -> str:
    """The body of ``path`` once it answers ``status``."""
    last = (0, "")

    async def answers() -> bool:
        nonlocal last
        last = await _get(port, path)
        return last[0] == status

    await wait_until(answers, timeout_s=timeout_s, step_s=0.1,
                     what=lambda: f"{path} answering {status} (it said {last[0]}: {last[1]!r})")
    return last[1]


async def test_ready_once_leased_not_ready_while_the_bus_is_frozen(
    nats_server: EmbeddedNats, bus: Bus
) -> None:
    port = free_port()
    probes = await health.HealthServer().start(port, "127.0.0.1")
    worker = Worker(bus, EchoStage())
    try:
        assert (await _get(port, "/readyz"))[0] == 503  # not started
        assert (await _get(port, "/livez"))[0] == 200
        assert (await _get(port, "/nope"))[0] == 404
        await worker.start()
        probes.started = True
        await _until(port, "/readyz", 200, 10)
        assert nats_server._proc is not None
        nats_server._proc.send_signal(signal.SIGSTOP)
        try:
            why = await _until(port, "/readyz", 503, 10)
            assert "leases not renewed" in why, why
            assert (await _get(port, "/livez"))[0] == 200  # the loop goes on ticking
        finally:
            nats_server._proc.send_signal(signal.SIGCONT)
        await _until(port, "/readyz", 200, 15)
    finally:
        await worker.stop()
        await probes.close()
