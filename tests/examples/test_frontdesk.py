"""``examples/frontdesk/agent.py``'s tools on a real SQLite file: what a caller may say about
days and times, a booking takes a table and a cancellation frees it, and a call run twice (its
idempotency key the same) books once and answers the same."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from voxbus.agents import ToolContext, ToolError
from voxbus.agents.loader import import_module, load
from voxbus.agents.tool import Tool

pytestmark = pytest.mark.fast

AGENT = Path(__file__).resolve().parents[2] / "examples" / "frontdesk" / "agent.py"
MODULE = load(str(AGENT))
fd: Any = import_module(str(AGENT))  # the same module object (cached by path)


@pytest.fixture(autouse=True)
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "frontdesk.sqlite3"
    monkeypatch.setenv("FRONTDESK_DB", str(path))
    return path


def ctx(call: str, session: str = "s1") -> ToolContext:
    return ToolContext(session=session, call_id=call, agent="frontdesk")


async def call(tool_name: str, context: ToolContext | None = None, /,
               **args: Any) -> tuple[bool, Any]:
    """The tool as the tools stage runs it: JSON arguments in, (ok, decoded result) out."""
    t: Tool = MODULE.tools[tool_name]
    outcome = await t.run(json.dumps(args), context or ctx(f"c-{tool_name}"))
    return outcome.ok, json.loads(outcome.result)


def test_the_module_defines_both_agents_and_their_tools() -> None:
    assert sorted(MODULE.agents) == ["events", "frontdesk"]
    front = MODULE.agents["frontdesk"]
    assert [t.name for t in front.tools] == ["opening_hours", "check_availability", "book_table",
                                             "cancel_booking"]
    assert front.handoff_names == ["events"]
    assert front.voice != MODULE.agents["events"].voice
    decls = {t.name: t.decl for t in front.tools}
    assert decls["check_availability"].read_only and decls["opening_hours"].read_only
    assert not decls["book_table"].read_only
    assert decls["book_table"].parameters["required"] == ["name", "day", "time", "people"]
    assert "ctx" not in decls["book_table"].parameters["properties"]


@pytest.mark.parametrize(("said", "minutes"), [
    ("7pm", 19 * 60), ("7 pm", 19 * 60), ("19:00", 19 * 60), ("seven", 19 * 60),
    ("7:30 p.m.", 19 * 60 + 30), ("seven thirty", 19 * 60 + 30), ("1930", 19 * 60 + 30),
    ("half past eight", 20 * 60 + 30), ("quarter to eight", 19 * 60 + 45), ("noon", 12 * 60),
    ("at 8 in the evening", 20 * 60), ("around seven o'clock", 19 * 60),
])
def test_times_as_callers_and_models_say_them(said: str, minutes: int) -> None:
    assert fd.parse_time(said) == minutes


@pytest.mark.parametrize(("said", "day"), [
    ("Friday", "friday"), ("friday", "friday"), ("this Friday", "friday"),
    ("Sat", "saturday"), ("next tuesday evening", "tuesday"), ("2026-05-15", "friday"),
])
def test_days_as_callers_and_models_say_them(said: str, day: str) -> None:
    assert fd.parse_day(said) == day


def test_what_cannot_be_understood_is_a_tool_error() -> None:
    with pytest.raises(ToolError):
        fd.parse_day("soon")
    with pytest.raises(ToolError):
        fd.parse_time("whenever")


async def test_opening_hours() -> None:
    assert await call("opening_hours", day="this Friday") == (
        True, {"day": "Friday", "open": True, "opens": "12:00", "closes": "23:00"})
    assert await call("opening_hours", day="Monday") == (True, {"day": "Monday", "open": False})
    ok, week = await call("opening_hours")
    assert ok and week["Monday"] == "closed" and week["Sunday"] == "12:00 to 21:00"


async def test_availability_answers_closed_days_and_too_large_parties() -> None:
    ok, closed = await call("check_availability", day="monday", time="7pm", people=2)
    assert ok and closed["available"] is False and "closed" in closed["reason"]
    ok, late = await call("check_availability", day="friday", time="23:30", people=2)
    assert ok and late["available"] is False
    ok, big = await call("check_availability", day="friday", time="7pm", people=12)
    assert not ok and "events" in big["error"]


async def test_a_booking_takes_the_table_and_a_cancellation_frees_it(db: Path) -> None:
    # Friday at 19:00 for 8: one table seats eight.
    ok, free = await call("check_availability", day="Friday", time="7pm", people=8)
    assert ok and free == {"day": "Friday", "time": "19:00", "people": 8, "available": True,
                           "table": 7}
    ok, booked = await call("book_table", ctx("t1-s0-r1-c0"), name="Rossi", day="this friday",
                            time="19:00", people=8)
    assert ok and booked["booked"] is True and booked["table"] == 7
    assert booked["name"] == "Rossi" and booked["time"] == "19:00"
    # An hour later the table is still taken (a sitting is two hours); two hours later it is free
    ok, taken = await call("check_availability", day="friday", time="8pm", people=7)
    assert ok and taken["available"] is False and "21:00" in taken["other_times"]
    ok, other = await call("book_table", ctx("t2-s0-r1-c0"), name="Bianchi", day="friday",
                           time="20:00", people=8)
    assert not ok and "no table" in other["error"]
    # Smaller parties still get the other tables.
    ok, small = await call("check_availability", day="friday", time="7pm", people=4)
    assert ok and small["available"] is True and small["table"] == 3

    ok, cancelled = await call("cancel_booking", ctx("t3-s0-r1-c0"), name="mr rossi")
    assert ok and cancelled["cancelled"] is True
    assert cancelled["bookings"] == [{"day": "Friday", "time": "19:00", "people": 8}]
    ok, again = await call("check_availability", day="friday", time="8pm", people=7)
    assert ok and again["available"] is True and again["table"] == 7
    ok, none = await call("cancel_booking", ctx("t4-s0-r1-c0"), name="Rossi")
    assert not ok and "no booking" in none["error"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM bookings WHERE cancelled_by IS NULL"
                            ).fetchone()[0] == 0


async def test_the_same_call_twice_books_once_and_answers_the_same(db: Path) -> None:
    """A tool replica killed mid-call: the call is delivered again with the same key."""
    key = ctx("t2-s0-r1-c0", session="call-42")
    first = await call("book_table", key, name="Rossi", day="Friday", time="7pm", people=4)
    second = await call("book_table", key, name="Rossi", day="Friday", time="7pm", people=4)
    assert first == second and first[0] is True
    # Another call (another key) with the same words is another booking.
    third = await call("book_table", ctx("t3-s0-r1-c0", session="call-42"), name="Rossi",
                       day="Friday", time="7pm", people=4)
    assert third[0] is True and third[1]["reference"] != first[1]["reference"]
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT call_key FROM bookings ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["call-42/t2-s0-r1-c0", "call-42/t3-s0-r1-c0"]

    # A cancellation run twice answers the same too (it does not say "no booking" the second
    # time), and frees both of Rossi's tables once.
    cancel = ctx("t4-s0-r1-c0", session="call-42")
    c1 = await call("cancel_booking", cancel, name="Rossi")
    c2 = await call("cancel_booking", cancel, name="Rossi")
    assert c1 == c2 and c1[0] is True and len(c1[1]["bookings"]) == 2


async def test_a_full_evening_and_the_times_still_free() -> None:
    tables = []
    for n in range(5):  # every table seating four at 19:00 (the larger ones take four too)
        ok, booked = await call("book_table", ctx(f"t{n}-s0-r1-c0"), name=f"Guest {n}",
                                day="saturday", time="19:00", people=4)
        assert ok, booked
        tables.append(booked["table"])
    assert tables == [3, 4, 5, 6, 7]  # the smallest table that fits, first
    ok, full = await call("check_availability", day="saturday", time="19:30", people=3)
    assert ok and full["available"] is False
    assert full["other_times"] == ["17:00", "21:00", "21:30"]  # the nearest three
    ok, two = await call("check_availability", day="saturday", time="19:30", people=2)
    assert ok and two["available"] is True and two["table"] == 1


async def test_event_requests_are_kept_once() -> None:
    key = ctx("t1-s0-r1-c0")
    first = await call("request_event", key, name="Marta", day="saturday", people=12,
                       notes="a birthday")
    assert first[0] and first[1]["requested"] is True and first[1]["people"] == 12
    assert await call("request_event", key, name="Marta", day="saturday", people=12) == first


async def test_bad_arguments_reach_the_model_as_errors() -> None:
    ok, err = await call("book_table", name="", day="friday", time="7pm", people=2)
    assert not ok and "name" in err["error"]
    ok, err = await call("book_table", name="Rossi", day="friday", time="7pm", people="four")
    assert not ok and "people" in err["error"]
    ok, err = await call("book_table", name="Rossi", day="monday", time="7pm", people=2)
    assert not ok and "closed" in err["error"]
