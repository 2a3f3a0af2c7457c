"""The tool calls of one model round: run by the LLM stage itself (``end_call``, the handoffs
``transfer_to_<agent>``, the built-in tools of a session without an agent) or published to the
session's tool workers, whose kept outcome is awaited (``agents.outcomes``).

A call's id names the turn, the reply's speculation, the round and the call's place in it
(``t3-s1-r1-c0``): a replica that redoes the turn after a takeover asks with the same id, so the
tool worker answers from the outcome it kept instead of running the tool again.

While a slow tool runs the caller is not left in silence: after the tool's ``filler_after_s``
its ``filler`` is said. A call that does not answer in its ``timeout_s`` is reported to the model
as failed. A guess (a reply started before the turn was committed) runs read-only tools at once;
a tool with side effects waits until the commit adopts the guess (a dropped guess is cancelled
before it acts).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from voxbus.agents.outcomes import ToolOutcomes
from voxbus.contracts.agents import END_CALL, TRANSFER_CALL, TRANSFER_PREFIX
from voxbus.contracts.messages import CalledTool, Message, ToolCall
from voxbus.runtime.stage import Context
from voxbus.services.llm.engine import ToolCallDelta, tool_result_message
from voxbus.services.llm.persona import Persona
from voxbus.services.llm.reply import Reply, TurnStats
from voxbus.services.llm.tools import ToolExecutor


@dataclass(frozen=True, kw_only=True)
class CallScope:
    """What a reply's tool calls need."""

    persona: Persona
    outcomes: ToolOutcomes
    executor: ToolExecutor
    #: Makes ``agent`` the session's agent (from the next reply on).
    handoff: Callable[[str], Awaitable[None]]


def call_id(reply: Reply, stats: TurnStats, index: int) -> str:
    return f"t{reply.turn}-s{reply.speculation}-r{stats.rounds}-c{index}"


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


async def run_calls(
    calls: list[ToolCallDelta], reply: Reply, stats: TurnStats, scope: CallScope, ctx: Context,
) -> AsyncGenerator[Message, None]:
    """Run a round's calls in order; yields what is to be published (the ``ToolCall``s for the
    tool workers, a filler's ``ReplyText``) and appends each result to the reply's messages."""
    persona = scope.persona
    for index, call in enumerate(calls):
        started = time.perf_counter()
        ok = True
        if not persona.agent:  # the worker's own tools (a session without an agent)
            result, message = scope.executor.run(call)
            reply.end_call |= result.end_call
            content, ok = result.content, result.ok
        elif call.name == END_CALL:
            reply.end_call = True
            content = _json({"status": "ending call"})
        elif call.name == TRANSFER_CALL and persona.transfers:
            ok, content = _transfer_call(call, reply, persona.transfers)
        elif call.name.startswith(TRANSFER_PREFIX):
            target = call.name.removeprefix(TRANSFER_PREFIX)
            if target in persona.handoffs:
                await scope.handoff(target)
                content = _json({"status": f"transferred to {target}",
                                 "note": f"the {target} agent answers from the caller's next "
                                         "turn; tell the caller in a few words"})
            else:
                ok, content = False, _json({"error": f"no agent {target!r} to transfer to"})
        elif (decl := persona.decls.get(call.name)) is not None:
            if not decl.read_only and reply.adopted is not None:
                await reply.adopted.wait()  # a guess acts only once it is the reply
            cid = call_id(reply, stats, index)
            yield ToolCall(session=reply.session, call_id=cid, agent=persona.agent,
                           tool=call.name, arguments=call.arguments, timeout_s=decl.timeout_s,
                           at_ns=time.time_ns())
            reply.pending[call.id] = (cid, decl.timeout_s)
            waiting = asyncio.ensure_future(
                scope.outcomes.wait(reply.session, cid, decl.timeout_s))
            try:
                if decl.filler:
                    done, _ = await asyncio.wait({waiting}, timeout=decl.filler_after_s)
                    if not done:
                        ctx.log.info("llm_tool_filler", tool=call.name, call_id=cid)
                        for out in reply.aside(decl.filler):
                            yield out
                outcome = await waiting
            finally:
                waiting.cancel()
            reply.pending.pop(call.id, None)
            if outcome is None:
                ok, content = False, _json(
                    {"error": f"{call.name} did not answer in {decl.timeout_s:g} s"})
            else:
                ok, content = outcome.ok, outcome.result
        else:
            ok, content = False, _json({"error": f"unknown tool {call.name!r}"})
        reply.messages.append(tool_result_message(call.id, content))
        reply.called.append(CalledTool(name=call.name, arguments=call.arguments, ok=ok))
        ctx.log.info("llm_tool_called", tool=call.name, ok=ok,
                     ms=round((time.perf_counter() - started) * 1000, 1),
                     pii={"arguments": call.arguments, "result": content[:2000]})


def _transfer_call(call: ToolCallDelta, reply: Reply,
                   transfers: dict[str, str]) -> tuple[bool, str]:
    """``transfer_call(to)``: the call goes to ``transfers[to]`` once this reply has played."""
    try:
        args = json.loads(call.arguments or "{}")
    except ValueError:
        args = None
    to = args.get("to") if isinstance(args, dict) else None
    if not isinstance(to, str) or to not in transfers:
        return False, _json({"error": f"transfer to one of: {', '.join(sorted(transfers))}"})
    reply.transfer_to = transfers[to]
    return True, _json({"status": f"transferring to {to}",
                        "note": "tell the caller in a few words; the line goes to them after "
                                "you finish speaking"})
