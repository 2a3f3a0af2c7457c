"""Tool calls survive kills of real processes: two tools replicas (``python -m
voxbus.services.tools``) or two LLM replicas (``python -m voxbus.services.llm`` on a scripted
OpenAI-compatible model) on a real nats-server; one is killed (-9) while a booking tool runs (it
books at once, then takes 2 s more, so the kill lands between the side effect and the kept
outcome). The booking exists exactly once, the caller's reply confirms it, and the gap is
reported."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.agents import booking_tools
from tests.agents.scripted import desk_model
from tests.faults.stages import REGION, owner_pid, report, spawn, stored, two_replicas
from tests.llm.scripted_openai_server import ScriptedOpenAIServer
from voxbus.agents.loader import load
from voxbus.agents.registry import AgentRegistry
from voxbus.contracts import streams
from voxbus.contracts.messages import EndOfTurn, ReplyEnd, SessionStarted
from voxbus.runtime.bus import Bus
from voxbus.runtime.testing import Tap, running, wait_until
from voxbus.services.llm.openai_engine import OpenAICompatEngine
from voxbus.services.llm.settings import LlmSettings
from voxbus.services.llm.stage import LlmStage
from voxbus.services.tools.stage import ToolsStage

#: No model, but four worker processes: in the phase that runs one test at a time, with the other
#: kill tests (the timings of tests beside them would suffer, and theirs).
pytestmark = pytest.mark.model

MODULE = str(Path(booking_tools.__file__))
SLOW_S = "2.0"


def rows(db: Path, table: str) -> list[tuple[object, ...]]:
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=10) as c:
        try:
            return list(c.execute(f"SELECT * FROM {table}"))  # noqa: S608 - a fixed table name
        except sqlite3.OperationalError:
            return []


async def publish_agents(bus: Bus) -> None:
    module = load(MODULE)
    await AgentRegistry(await bus.kv(streams.agents_bucket(REGION))).publish(
        [a.definition(MODULE) for a in module.agents.values()])


def ask(session: str, n: int, text: str) -> EndOfTurn:
    now = time.time_ns()
    return EndOfTurn(session=session, turn=n, transcript=text, speech_start_ns=now,
                     speech_end_ns=now, at_ns=now)


async def ends(bus: Bus, session: str) -> list[ReplyEnd]:
    kept = await stored(bus, session, streams.text_stream(REGION))
    return [m for m in kept if isinstance(m, ReplyEnd)]


async def kill_mid_call(bus: Bus, stage: str, session: str, text: str,
                        db: Path) -> tuple[float, list[ReplyEnd]]:
    """The caller asks for a booking; once the tool has started, the ``stage`` replica holding
    the session is killed (-9). The seconds from the kill to the reply's end, and the ends
    stored."""
    tap = await Tap.on_bus(bus, REGION, f"{session}.llm.reply")
    await bus.publish(REGION, SessionStarted(session=session, agent="desk"))
    await bus.publish(REGION, ask(session, 1, text))
    await wait_until(lambda: bool(rows(db, "starts")), timeout_s=20)
    os.kill(await owner_pid(bus, stage, session), signal.SIGKILL)
    killed = time.monotonic()
    await tap.until(lambda t: bool(t.of(ReplyEnd, session)), timeout_s=30)
    gap = time.monotonic() - killed
    await asyncio.sleep(0.5)
    return gap, await ends(bus, session)


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "bookings.sqlite3"
    monkeypatch.setenv("BOOKINGS_DB", str(path))
    monkeypatch.setenv("BOOKING_SLOW_S", SLOW_S)
    return path


@pytest.fixture
async def model() -> AsyncIterator[ScriptedOpenAIServer]:
    async with ScriptedOpenAIServer(desk_model) as server:
        yield server


def scripted_llm(model: ScriptedOpenAIServer) -> LlmStage:
    engine = OpenAICompatEngine(base_url=model.base_url, model="scripted")
    return LlmStage(engine, LlmSettings(backend="openai", base_url=model.base_url))


async def test_a_tools_replica_killed_mid_call_books_once(
    tmp_path: Path, db: Path, model: ScriptedOpenAIServer,
) -> None:
    async with two_replicas("tools", tmp_path, args=(MODULE,)) as (bus, _procs):
        await publish_agents(bus)
        async with running(bus, scripted_llm(model)):
            gap, end = await kill_mid_call(bus, "tools", "tools-kill",
                                           "Could you book a table please?", db)
            assert len(end) == 1 and "Booked under Rossi, booking 1." in end[0].text
            assert [t.name for t in end[0].tools] == ["book_table"] and end[0].tools[0].ok
            starts = rows(db, "starts")
            assert len(starts) == 2 and starts[0][0] == starts[1][0]  # run again, same key
            assert starts[0][1] != starts[1][1]  # by the other replica
            assert rows(db, "bookings") == [(starts[0][0], "Rossi", 4)]  # booked once
            report("tools replica killed mid-call", gap_s=gap - float(SLOW_S),
                   bookings=len(rows(db, "bookings")), runs=len(starts))


async def test_an_llm_replica_killed_while_waiting_books_once_and_keeps_the_handoff(
    tmp_path: Path, db: Path, model: ScriptedOpenAIServer,
) -> None:
    env = {"LLM_BACKEND": "openai", "LLM_BASE_URL": model.base_url, "LLM_MODEL": "scripted",
           "BOOKINGS_DB": str(db), "BOOKING_SLOW_S": SLOW_S}
    async with two_replicas("llm", tmp_path, env=env) as (bus, procs):
        await publish_agents(bus)
        async with running(bus, ToolsStage(load(MODULE).tools, replica="tools-1")):
            s = "llm-kill-waiting"
            tap = await Tap.on_bus(bus, REGION, f"{s}.llm.reply")
            gap, end = await kill_mid_call(bus, "llm", s, "Book a table for us, please.", db)
            assert len(end) == 1 and "Booked under Rossi, booking 1." in end[0].text
            assert len(rows(db, "starts")) == 1  # the survivor asked with the same call id
            assert len(rows(db, "bookings")) == 1
            report("llm replica killed waiting for a tool", gap_s=max(0.0, gap),
                   bookings=len(rows(db, "bookings")), runs=len(rows(db, "starts")))

            # a handoff, then the replica holding the session dies and a new one starts: it
            # answers as events
            await bus.publish(REGION, ask(s, 2, "It is a party of twelve."))
            await tap.until(lambda t: any(m.turn == 2 for m in t.of(ReplyEnd, s)), timeout_s=30)
            assert next(m for m in tap.of(ReplyEnd, s) if m.turn == 2).agent == "desk"
            os.kill(await owner_pid(bus, "llm", s), signal.SIGKILL)
            url = f"nats://{bus.nc.connected_url.netloc}" if bus.nc.connected_url else ""
            procs.append(spawn("llm", url, tmp_path / "llm-new.log", env))
            await bus.publish(REGION, ask(s, 3, "Twelve people on Saturday."))
            await tap.until(lambda t: any(m.turn == 3 for m in t.of(ReplyEnd, s)), timeout_s=30)
            third = next(m for m in tap.of(ReplyEnd, s) if m.turn == 3)
            assert not procs[-1].poll()
            assert third.agent == "events" and third.text.startswith("Events team here")


