"""An agent's tool calls through the real bus: the LLM stage (its ``openai`` backend on a scripted
model) publishes each call, a tools stage runs it and keeps the outcome under the call's key,
and the reply goes on from it. Fillers, barge-in during a call, handoffs, greetings and unknown
agents, on a real nats-server."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from tests.agents import booking_tools
from tests.agents.scripted import desk_model
from tests.conftest import REGION
from tests.llm.scripted_openai_server import ScriptedOpenAIServer
from voxbus.agents.loader import load
from voxbus.agents.outcomes import ToolOutcomes
from voxbus.agents.registry import AgentRegistry, SessionAgents
from voxbus.contracts.agents import AgentDefinition
from voxbus.contracts.messages import (
    EndOfTurn,
    ErrorEvent,
    Interrupt,
    ReplyEnd,
    ReplyText,
    SessionStarted,
    ToolCall,
)
from voxbus.contracts.streams import agents_bucket
from voxbus.runtime.bus import Bus
from voxbus.runtime.testing import Tap, running, wait_until
from voxbus.services.llm.history import HistoryStore
from voxbus.services.llm.openai_engine import OpenAICompatEngine
from voxbus.services.llm.settings import LlmSettings
from voxbus.services.llm.stage import LlmStage
from voxbus.services.tools.stage import ToolsStage

MODULE = str(Path(booking_tools.__file__))


@pytest.fixture
def bookings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "bookings.sqlite3"
    monkeypatch.setenv("BOOKINGS_DB", str(db))
    return db


@pytest.fixture
async def stages(bus: Bus, bookings: Path) -> AsyncIterator[Tap]:
    """The LLM stage on the scripted model and the test module's tools stage, the module's
    agents published; a tap on replies, tool calls and errors."""
    module = load(MODULE)
    await AgentRegistry(await bus.kv(agents_bucket(REGION))).publish(
        [a.definition(MODULE) for a in module.agents.values()])
    async with ScriptedOpenAIServer(desk_model) as model:
        engine = OpenAICompatEngine(base_url=model.base_url, model="scripted")
        llm = LlmStage(engine, LlmSettings(backend="openai", base_url=model.base_url))
        async with running(bus, llm), running(bus, ToolsStage(module.tools, replica="t1")):
            tap = await Tap.on_bus(bus, REGION, "*.llm.reply", "*.tool.call", "*.ctl.error")
            yield tap


def turn(session: str, n: int, text: str) -> EndOfTurn:
    now = time.time_ns()
    return EndOfTurn(session=session, turn=n, transcript=text, speech_start_ns=now,
                     speech_end_ns=now, at_ns=now)


async def end_of(tap: Tap, session: str, n: int, timeout_s: float = 20.0) -> ReplyEnd:
    def found(t: Tap) -> bool:
        return any(m.turn == n for m in t.of(ReplyEnd, session))
    await tap.until(found, timeout_s=timeout_s)
    return next(m for m in tap.of(ReplyEnd, session) if m.turn == n)


def booked(db: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(db) as c:
        try:
            return list(c.execute("SELECT name, people FROM bookings"))
        except sqlite3.OperationalError:  # no booking tool ran yet
            return []


async def test_a_booking_runs_on_the_tools_stage_once_and_the_reply_confirms_it(
    bus: Bus, stages: Tap, bookings: Path,
) -> None:
    s = "agent-book"
    await bus.publish(REGION, SessionStarted(session=s, agent="desk"))
    await bus.publish(REGION, turn(s, 1, "Can I book a table for four?"))
    end = await end_of(stages, s, 1)
    assert end.agent == "desk"
    assert [t.name for t in end.tools] == ["book_table"] and end.tools[0].ok
    assert json.loads(end.tools[0].arguments) == {"name": "Rossi", "people": 4}
    assert "Booked under Rossi" in end.text
    assert booked(bookings) == [("Rossi", 4)]
    calls = stages.of(ToolCall, s)
    assert [c.call_id for c in calls] == ["t1-s0-r1-c0"] and calls[0].agent == "desk"
    kept = await ToolOutcomes(await bus.state(REGION)).get(s, "t1-s0-r1-c0")
    assert kept is not None and kept.ok and kept.replica == "t1"
    assert {m.voice for m in stages.of(ReplyText, s)} == {"desk-voice"}
    # the same call again (a replica redoing the turn) is answered from the kept outcome
    await bus.publish(REGION, calls[0])  # (the stream drops the copy: same message id)
    await bus.publish(REGION, ToolCall(session=s, call_id=calls[0].call_id, agent="desk",
                                       tool="book_table", arguments=calls[0].arguments))
    await asyncio.sleep(0.5)
    assert booked(bookings) == [("Rossi", 4)]


async def test_a_slow_tool_gets_the_filler_and_a_barge_in_keeps_what_it_did(
    bus: Bus, stages: Tap, bookings: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BOOKING_SLOW_S", "1.5")
    s = "agent-slow"
    await bus.publish(REGION, SessionStarted(session=s, agent="desk"))
    await bus.publish(REGION, turn(s, 1, "Please book a table."))
    await stages.until(lambda t: "One moment" in "".join(m.text for m in t.of(ReplyText, s)),
                       timeout_s=10)
    heard = "".join(m.text for m in stages.of(ReplyText, s))
    await bus.publish(REGION, Interrupt(session=s, turn=1, at_ns=time.time_ns()))
    store = HistoryStore(await bus.state(REGION))

    async def recorded() -> bool:
        record = (await store.load(s)).find(1)
        return record is not None and any(m["role"] == "tool" for m in record.reply)

    await wait_until(recorded, timeout_s=10)
    record = (await store.load(s)).find(1)
    assert record is not None
    said = " ".join(m.get("content") or "" for m in record.reply if m["role"] == "assistant")
    assert "One moment" in said and "Booked under" not in said
    results = [json.loads(m["content"] or "{}") for m in record.reply if m["role"] == "tool"]
    assert results and results[0]["booked"] is True
    assert booked(bookings) == [("Rossi", 4)]
    assert not [m for m in stages.of(ReplyEnd, s) if m.turn == 1]  # cut: no end of reply
    assert heard.strip().startswith("One moment")


async def test_a_handoff_switches_agent_voice_and_instructions_from_the_next_reply(
    bus: Bus, stages: Tap,
) -> None:
    s = "agent-handoff"
    await bus.publish(REGION, SessionStarted(session=s, agent="desk"))
    await bus.publish(REGION, turn(s, 1, "It is a party of twelve."))
    first = await end_of(stages, s, 1)
    assert first.agent == "desk" and [t.name for t in first.tools] == ["transfer_to_events"]
    assert "events team" in first.text
    await bus.publish(REGION, turn(s, 2, "Yes, twelve of us."))
    second = await end_of(stages, s, 2)
    assert second.agent == "events" and second.text.startswith("Events team here")
    assert {m.voice for m in stages.of(ReplyText, s) if m.turn == 2} == {"events-voice"}
    kept = await SessionAgents(await bus.state(REGION)).load(s)
    assert kept is not None and kept.current == "events" and kept.handoffs == ["events"]


async def test_transfer_call_names_a_listed_person_and_the_reply_carries_the_number(
    bus: Bus, stages: Tap,
) -> None:
    s = "agent-transfer"
    await bus.publish(REGION, SessionStarted(session=s, agent="desk"))
    await bus.publish(REGION, turn(s, 1, "Can I talk to the manager please?"))
    end = await end_of(stages, s, 1)
    assert [t.name for t in end.tools] == ["transfer_call"] and end.tools[0].ok
    assert end.transfer_to == "tel:+15550199" and "manager" in end.text
    # a person the agent does not list: refused, nothing dialled
    await bus.publish(REGION, turn(s, 2, "Put me through to the manager's owner."))
    second = await end_of(stages, s, 2)
    assert not second.tools[0].ok and second.transfer_to == ""
    assert "transfer to one of: manager" in second.text


async def test_a_session_keeps_the_version_it_started_with(bus: Bus, stages: Tap) -> None:
    s = "agent-version"
    await bus.publish(REGION, SessionStarted(session=s, agent="desk"))
    await bus.publish(REGION, turn(s, 1, "Hi there."))
    await end_of(stages, s, 1)
    registry = AgentRegistry(await bus.kv(agents_bucket(REGION)))
    old = await registry.get("desk")
    assert old is not None
    new = AgentDefinition(name="desk", instructions="You plan events for large parties.",
                          handoffs=["events"]).with_version()
    await registry.publish([new])
    await bus.publish(REGION, turn(s, 2, "Hi again."))
    assert (await end_of(stages, s, 2)).text.startswith("Hello")  # still the old desk
    s2 = "agent-version-new"
    await bus.publish(REGION, SessionStarted(session=s2, agent="desk"))
    await bus.publish(REGION, turn(s2, 1, "Hi there."))
    assert (await end_of(stages, s2, 1)).text.startswith("Events team")  # the new one
    await registry.publish([old])


async def test_an_unknown_agent_is_an_error_event_and_the_session_gets_the_default(
    bus: Bus, stages: Tap,
) -> None:
    s = "agent-unknown"
    await bus.publish(REGION, SessionStarted(session=s, agent="nobody"))
    await stages.until(lambda t: bool(t.of(ErrorEvent, s)), timeout_s=10)
    error = stages.of(ErrorEvent, s)[0]
    assert error.code == "unknown_agent" and "nobody" in error.message
    await bus.publish(REGION, turn(s, 1, "Hi there."))
    end = await end_of(stages, s, 1)
    assert end.agent == "" and end.text


async def test_the_greeting_is_said_when_the_caller_joins(bus: Bus, stages: Tap) -> None:
    registry = AgentRegistry(await bus.kv(agents_bucket(REGION)))
    await registry.publish([AgentDefinition(name="greeter", instructions="Greet.",
                                            greeting="Welcome to the desk!").with_version()])
    s = "agent-greet"
    await bus.publish(REGION, SessionStarted(session=s, agent="greeter"))
    end = await end_of(stages, s, 0)
    assert end.text == "Welcome to the desk!" and end.agent == "greeter"
    history = await HistoryStore(await bus.state(REGION)).load(s)
    assert history.messages() == [{"role": "assistant", "content": "Welcome to the desk!"}]


def guess(session: str, n: int, text: str, speculation: int) -> EndOfTurn:
    now = time.time_ns()
    return EndOfTurn(session=session, turn=n, transcript=text, speech_start_ns=now,
                     speech_end_ns=now, at_ns=now, speculative=True, speculation=speculation)


async def test_a_guess_runs_read_only_tools_at_once_and_waits_for_the_commit_to_act(
    bus: Bus, stages: Tap, bookings: Path,
) -> None:
    s = "agent-guess"
    await bus.publish(REGION, SessionStarted(session=s, agent="desk"))
    await bus.publish(REGION, guess(s, 1, "What are your hours on Friday?", 1))
    await stages.until(lambda t: bool(t.of(ToolCall, s)), timeout_s=10)  # before the commit
    assert [(c.tool, c.call_id) for c in stages.of(ToolCall, s)] == [
        ("opening_hours", "t1-s1-r1-c0")]
    await bus.publish(REGION, msgspec.structs.replace(
        turn(s, 1, "What are your hours on Friday?"), speculation=1))
    end = await end_of(stages, s, 1)
    assert end.speculation == 1 and end.text == "We are open 12:00-23:00."
    assert [t.name for t in end.tools] == ["opening_hours"]

    # a booking guessed in the silence waits: nothing is booked until the turn is committed
    await bus.publish(REGION, guess(s, 2, "Please book it.", 1))
    await asyncio.sleep(1.0)
    assert [c.tool for c in stages.of(ToolCall, s)] == ["opening_hours"] and not booked(bookings)
    await bus.publish(REGION, msgspec.structs.replace(turn(s, 2, "Please book it."),
                                                      speculation=1))
    end = await end_of(stages, s, 2)
    assert "Booked under Rossi" in end.text and booked(bookings) == [("Rossi", 4)]
    assert stages.of(ToolCall, s)[-1].call_id == "t2-s1-r1-c0"
