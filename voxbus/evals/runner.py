"""Scripted conversations on a bus: each scenario a session of its own (``SessionStarted`` with
its agent), each turn a committed ``EndOfTurn``, as the STT would send once the caller stopped
speaking; the turn's ``ReplyText``s and ``ReplyEnd`` (and any error event) are read on core NATS
from the session's subjects, and the turn is checked against its ``expect``."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from voxbus.contracts.messages import (
    EndOfTurn,
    ErrorEvent,
    ReplyEnd,
    ReplyText,
    SessionEnded,
    SessionStarted,
)
from voxbus.contracts.subjects import Kind, subject
from voxbus.evals.scenarios import (
    Call,
    EvalFile,
    Expect,
    Scenario,
    Turn,
    call_text,
    check,
    handoff_of,
)
from voxbus.runtime.bus import Bus

#: How long a greeting (turn 0) is waited for before the first turn.
GREETING_WAIT_S = 30.0
#: What the caller says in a warm-up session.
WARM_UP_LINE = "Hello."


@dataclass
class TurnResult:
    scenario: str
    session: str
    turn: int
    user: str
    passed: bool
    reasons: list[str] = field(default_factory=list)
    tools: list[Call] = field(default_factory=list)
    handoff: str | None = None
    reply: str = ""
    #: The agent that answered (``ReplyEnd.agent``).
    agent: str = ""
    end_call: bool = False
    #: ``ReplyEnd.reason`` ("" : no reply came).
    reason: str = ""
    #: From the ``EndOfTurn``'s publish to the ``ReplyEnd`` / the first ``ReplyText``.
    reply_s: float | None = None
    first_text_s: float | None = None
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "session": self.session, "turn": self.turn,
            "user": self.user, "passed": self.passed, "reasons": self.reasons,
            "tools": [{"name": c.name, "args": c.args, "arguments": c.arguments, "ok": c.ok}
                      for c in self.tools],
            "handoff": self.handoff, "reply": self.reply, "agent": self.agent,
            "end_call": self.end_call, "reason": self.reason,
            "latency_s": {"reply_end": _round(self.reply_s),
                          "first_text": _round(self.first_text_s)},
            "errors": self.errors,
        }

    @property
    def tools_text(self) -> str:
        return ", ".join(call_text(c.name, c.args, c.ok) for c in self.tools) or "-"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class _Listener:
    """One session's replies and error events, by turn, as they arrive."""

    def __init__(self) -> None:
        self.ends: dict[int, ReplyEnd] = {}
        self.first_text: dict[int, float] = {}
        self.errors: dict[int, list[ErrorEvent]] = {}
        self._arrived = asyncio.Event()
        self._subs: list[Subscription] = []
        self.bus: Bus | None = None

    async def open(self, bus: Bus, region: str, session: str) -> None:
        self.bus = bus
        for kind in (Kind.REPLY, Kind.ERROR):
            self._subs.append(await bus.nc.subscribe(subject(region, session, kind),
                                                     cb=self._on))

    async def close(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on(self, raw: Msg) -> None:
        try:
            assert self.bus is not None
            msg = await self.bus.read(raw.subject, raw.data)
        except Exception:  # noqa: BLE001 - not ours to judge
            return
        now = time.monotonic()
        if isinstance(msg, ReplyText):
            self.first_text.setdefault(msg.turn, now)
        elif isinstance(msg, ReplyEnd):
            self.ends.setdefault(msg.turn, msg)
        elif isinstance(msg, ErrorEvent):
            self.errors.setdefault(msg.turn, []).append(msg)
        self._arrived.set()

    async def end(self, turn: int, timeout_s: float) -> tuple[ReplyEnd | None, float]:
        """The turn's ``ReplyEnd`` (None after ``timeout_s``) and when it arrived."""
        deadline = time.monotonic() + timeout_s
        while turn not in self.ends:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, time.monotonic()
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)
        return self.ends[turn], time.monotonic()


def _session_id(run: str, index: int) -> str:
    return f"eval-{run}-{index}"


async def run_scenario(
    bus: Bus, region: str, scenario: Scenario, session: str, *, timeout_s: float,
    greeting: bool, on_turn: Callable[[TurnResult], None] | None = None,
) -> list[TurnResult]:
    """One scenario as one session; a result for each of its turns."""
    listener = _Listener()
    await listener.open(bus, region, session)
    results: list[TurnResult] = []
    try:
        now = time.time_ns()
        await bus.publish(region, SessionStarted(session=session, agent=scenario.agent,
                                                 participant="eval", at_ns=now))
        if greeting:
            await listener.end(0, min(timeout_s, GREETING_WAIT_S))
        lost = ""
        for n, turn in enumerate(scenario.turns, start=1):
            result = TurnResult(scenario=scenario.name, session=session, turn=n,
                                user=turn.user, passed=False)
            if lost:
                result.reasons.append(f"not run: {lost}")
            else:
                await _one_turn(bus, region, session, n, turn.user, listener, result, timeout_s)
                if result.reason:
                    result.reasons += check(turn.expect, result.tools, result.reply,
                                            result.end_call)
                else:
                    lost = f"turn {n} got no reply"
                result.passed = not result.reasons
            results.append(result)
            if on_turn is not None:
                on_turn(result)
        with contextlib.suppress(Exception):
            await bus.publish(region, SessionEnded(session=session, reason="eval done",
                                                   at_ns=time.time_ns()))
    finally:
        await listener.close()
    return results


async def _one_turn(bus: Bus, region: str, session: str, n: int, user: str,
                    listener: _Listener, result: TurnResult, timeout_s: float) -> None:
    now = time.time_ns()
    started = time.monotonic()
    await bus.publish(region, EndOfTurn(session=session, turn=n, transcript=user,
                                        speech_start_ns=now - 1_000_000_000,
                                        speech_end_ns=now, at_ns=now))
    end, arrived = await listener.end(n, timeout_s)
    for err in listener.errors.get(n, []):
        result.errors.append(f"{err.stage}: {err.code}: {err.message}")
    if end is None:
        result.reasons.append(f"no reply in {timeout_s:g} s")
        result.reasons += [f"error event {e}" for e in result.errors]
        return
    result.reply_s = arrived - started
    if (first := listener.first_text.get(n)) is not None:
        result.first_text_s = max(0.0, first - started)
    result.reply = end.text
    result.agent = end.agent
    result.end_call = end.end_call
    result.reason = end.reason
    result.tools = [Call(t.name, t.arguments, t.ok) for t in end.tools]
    result.handoff = handoff_of(result.tools)
    if end.reason == "error":
        result.reasons.append("the LLM stage failed (reason=error): "
                              + ("; ".join(result.errors) or "its apology was spoken"))


async def warm_up(bus: Bus, region: str, agent: str, *, timeout_s: float,
                  greeting: bool) -> TurnResult:
    """One throwaway turn with ``agent`` (not counted): a stage just started reads the agent's
    prompt (its instructions and tools) once here, not in the first scenario's first turn."""
    scenario = Scenario(name=f"warm-up {agent}", agent=agent,
                        turns=(Turn(WARM_UP_LINE, Expect()),))
    session = _session_id(uuid.uuid4().hex[:10], 0)
    (result,) = await run_scenario(bus, region, scenario, session, timeout_s=timeout_s,
                                   greeting=greeting)
    return result


async def run_file(
    bus: Bus, region: str, file: EvalFile, *, timeout_s: float,
    greetings: dict[str, bool] | None = None, on_turn: Callable[[TurnResult], None] | None = None,
) -> list[TurnResult]:
    """Every scenario of ``file``, one after another (a fresh session each)."""
    run = uuid.uuid4().hex[:10]
    results: list[TurnResult] = []
    for i, scenario in enumerate(file.scenarios, start=1):
        results += await run_scenario(
            bus, region, scenario, _session_id(run, i), timeout_s=timeout_s,
            greeting=(greetings or {}).get(scenario.agent, False), on_turn=on_turn)
    return results


# ---- summaries --------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by the nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(results: list[TurnResult]) -> dict[str, Any]:
    ends = [r.reply_s for r in results if r.reply_s is not None]
    firsts = [r.first_text_s for r in results if r.first_text_s is not None]
    passed = sum(r.passed for r in results)
    return {
        "passed": passed, "turns": len(results),
        "score": round(passed / len(results), 4) if results else 0.0,
        "latency_s": {
            "reply_end": {"p50": _round(percentile(ends, 0.5)),
                          "p95": _round(percentile(ends, 0.95)),
                          "max": _round(max(ends) if ends else None)},
            "first_text": {"p50": _round(percentile(firsts, 0.5)),
                           "p95": _round(percentile(firsts, 0.95)),
                           "max": _round(max(firsts) if firsts else None)},
        },
    }
