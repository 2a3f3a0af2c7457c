"""The tools stage: runs the tool calls the LLM stage publishes, one module's tools per worker.

A ``ToolCall`` is handled in its session's lane like any stage input (partitions, leases,
takeover, drain: ``runtime``). Its outcome is kept in the state bucket under the call's id before
the call is acked, so:
- a call delivered again (this replica died mid-call, or acked late) whose outcome is kept is
  not run again: the kept outcome stands;
- a call that died mid-run is run again by the replica that takes the session over, with the
  same ``ToolContext.key``: a tool whose side effect uses the key (a unique key in its database,
  an HTTP ``Idempotency-Key``) makes it once.

A call that runs past its ``timeout_s`` (plus a grace) is cancelled and kept as failed: the LLM
stage told the model so already.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping

import msgspec
import structlog

from voxbus.agents.outcomes import ToolOutcomes
from voxbus.agents.tool import Tool, ToolContext
from voxbus.contracts.agents import ToolOutcome
from voxbus.contracts.messages import AnyMessage, Message, ToolCall
from voxbus.contracts.subjects import Kind
from voxbus.runtime import metrics
from voxbus.runtime.stage import Context, SessionPolicy, StatelessStage

log = structlog.get_logger("voxbus.tools")

#: A call still running this long after the LLM stopped waiting is cancelled.
TIMEOUT_GRACE_S = 2.0


class ToolsStage(StatelessStage):
    name = "tools"
    inputs: tuple[Kind, ...] = (Kind.TOOL_CALL,)
    urgent: tuple[Kind, ...] = ()
    policy = SessionPolicy(idle_close_s=10.0)

    def __init__(self, tools: Mapping[str, Tool], *, replica: str = "") -> None:
        self.tools = dict(tools)
        self.replica = replica
        self.calls = 0

    async def handle(self, msg: AnyMessage, ctx: Context) -> AsyncIterator[Message]:
        if isinstance(msg, ToolCall):
            await self._call(msg, ctx)
        return
        yield  # an async generator that publishes nothing: the outcome goes to the state bucket

    async def _call(self, msg: ToolCall, ctx: Context) -> None:
        outcomes = ToolOutcomes(await ctx.bus.state(ctx.region))
        kept = await outcomes.get(msg.session, msg.call_id)
        if kept is not None:
            ctx.log.info("tool_call_replayed", tool=msg.tool, call_id=msg.call_id, ok=kept.ok,
                         by=kept.replica)
            return
        tool = self.tools.get(msg.tool)
        started = time.perf_counter()
        if tool is None:
            outcome = ToolOutcome(call_id=msg.call_id, tool=msg.tool, ok=False,
                                  result=json.dumps({"error": f"unknown tool {msg.tool!r}"}))
        else:
            tctx = ToolContext(session=msg.session, call_id=msg.call_id, agent=msg.agent,
                               region=ctx.region, log=ctx.log)
            try:
                async with asyncio.timeout(msg.timeout_s + TIMEOUT_GRACE_S):
                    outcome = await tool.run(msg.arguments, tctx)
            except TimeoutError:
                outcome = ToolOutcome(
                    call_id=msg.call_id, tool=msg.tool, ok=False,
                    result=json.dumps({"error": f"{msg.tool} did not finish in time"}))
        ms = round((time.perf_counter() - started) * 1000, 1)
        outcome = msgspec.structs.replace(outcome, ms=ms, replica=self.replica,
                                          at_ns=time.time_ns())
        await outcomes.put(msg.session, outcome)  # kept before the ack: never run again
        self.calls += 1
        metrics.TURNS.add(1, {"stage": "tools"})
        ctx.log.info("tool_call_done", tool=msg.tool, call_id=msg.call_id, ok=outcome.ok, ms=ms,
                     pii={"arguments": msg.arguments, "result": outcome.result[:2000]})
