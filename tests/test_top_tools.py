"""``voxbus top`` shows the tools workers as a stage: their replicas, the partitions they hold
and the tool calls waiting for them (lag), with no latency of their own."""

from __future__ import annotations

import asyncio
import time

from tests.conftest import REGION
from voxbus.agents.tool import tool
from voxbus.contracts.messages import ToolCall
from voxbus.ops.top import Latency, bus_view, render
from voxbus.runtime.bus import Bus
from voxbus.runtime.worker import Worker, WorkerOptions
from voxbus.services.tools.stage import ToolsStage


@tool
async def ping() -> str:
    """Answer pong."""
    return "pong"


async def _rows(bus: Bus, until: str) -> str:
    deadline = time.monotonic() + 10
    while True:
        rows = await bus_view(bus, REGION)
        text = render(rows, {}, Latency(), [], metrics_on=False)
        line = next(x for x in text.splitlines() if x.split()[:2] == [REGION, "tools"])
        if line.split()[2:4] == until.split() or time.monotonic() > deadline:
            return line
        await asyncio.sleep(0.1)


async def test_top_lists_the_tools_workers(bus: Bus) -> None:
    # a call waiting before any tool worker runs: the lag of the tools consumers
    worker = Worker(bus, ToolsStage({"ping": ping}), WorkerOptions(replica="tools-a"))
    await worker.ensure_consumers(REGION)
    await bus.publish(REGION, ToolCall(session="top1", call_id="c1", agent="a", tool="ping"))
    line = await _rows(bus, "0 0")
    assert line.split()[2:8] == ["0", "0", "-", "1", "0", "-"], line
    await worker.start()
    try:
        line = await _rows(bus, "1 8")
        cols = line.split()
        assert cols[2:4] == ["1", "8"] and cols[7:9] == ["-", "-"], line
        assert line.endswith("tools-a (8)"), line
    finally:
        await worker.stop()
