"""A stage replica in its own process, for the scale-out test: records what it handles on a core
subject. Run: python -m tests.runtime.replica_proc NATS_URL REGION NAME DELAY_MS"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator

from voxbus.contracts.messages import AnyMessage, AudioIn, Message
from voxbus.contracts.subjects import Kind
from voxbus.runtime import logging as vlog
from voxbus.runtime.bus import Bus
from voxbus.runtime.stage import Context, StatelessStage
from voxbus.runtime.worker import Worker, worker_options_from_env


class RecorderStage(StatelessStage):
    name = "recorder"
    inputs: tuple[Kind, ...] = (Kind.AUDIO_IN,)

    def __init__(self, bus: Bus, replica: str, delay_s: float) -> None:
        self.bus = bus
        self.replica = replica
        self.delay_s = delay_s

    async def handle(self, msg: AnyMessage, ctx: Context) -> AsyncIterator[Message]:
        assert isinstance(msg, AudioIn)
        await asyncio.sleep(self.delay_s)
        record = {"session": msg.session, "seq": msg.seq, "replica": self.replica, "t": time.time()}
        await self.bus.nc.publish("test.processed", json.dumps(record).encode())
        return
        yield  # an async generator that yields nothing


async def main(url: str, region: str, name: str, delay_ms: float) -> None:
    vlog.configure(os.environ.get("REPLICA_LOG_LEVEL", "warning"))
    bus = await Bus.connect(url, regions=[region], partitions=16, name=name)
    opts = dataclasses.replace(worker_options_from_env(), replica=name)  # VOXBUS_ACK_WAIT_S...
    worker = Worker(bus, RecorderStage(bus, name, delay_ms / 1000), opts)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await worker.start()
    print("ready", flush=True)
    await stop.wait()
    await worker.stop()
    await bus.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
