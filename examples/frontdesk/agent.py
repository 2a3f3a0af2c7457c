"""A restaurant's front desk: an agent that tells the opening hours, checks and books tables and
cancels bookings, and hands parties of more than 8 to an ``events`` agent.

Its tools keep the restaurant's tables and bookings in a real SQLite file, ``FRONTDESK_DB``
(default ``.voxbus/frontdesk.sqlite3``), made on first use with a fixed set of tables. A booking
holds its table for two hours; a cancelled booking frees it. ``book_table``, ``cancel_booking``
and ``request_event`` use the call's idempotency key (``ToolContext.key``) as a unique column, so
a call run twice (a tool replica killed mid-call, the call delivered again) acts once and
answers the same.

Run it on a bus (``voxbus nats`` and ``voxbus llm`` running; a model that calls tools)::

    LLM_MODEL_NAME=qwen-1.5b voxbus llm &
    voxbus tools examples/frontdesk/agent.py     # runs the tools, publishes both agents

then start sessions with ``SessionStarted(agent="frontdesk")`` (or ``LLM_AGENT=frontdesk`` for
every session). Check it with scripted conversations, which start everything themselves::

    voxbus eval examples/frontdesk/eval.yaml

The parsing of days and times is forgiving on purpose: small models pass "this Friday", "7pm",
"seven thirty" or "19:00".
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from time import time_ns
from typing import Any, TypeVar

from voxbus.agents import Agent, ToolContext, ToolError, tool

DB_ENV = "FRONTDESK_DB"
DEFAULT_DB = ".voxbus/frontdesk.sqlite3"
RESTAURANT = "Trattoria Sole"

#: (table number, seats): the restaurant's floor, made once in a new database.
TABLES: tuple[tuple[int, int], ...] = (
    (1, 2), (2, 2), (3, 4), (4, 4), (5, 4), (6, 6), (7, 8),
)
LARGEST_PARTY = max(seats for _, seats in TABLES)
#: A booking holds its table this long.
SITTING_MIN = 120
#: The last booking starts this long before closing.
LAST_BOOKING_BEFORE_CLOSE_MIN = 60

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
#: Opening and closing times per weekday (minutes after midnight); None: closed.
HOURS: dict[str, tuple[int, int] | None] = {
    "monday": None,
    "tuesday": (12 * 60, 22 * 60),
    "wednesday": (12 * 60, 22 * 60),
    "thursday": (12 * 60, 22 * 60),
    "friday": (12 * 60, 23 * 60),
    "saturday": (12 * 60, 23 * 60),
    "sunday": (12 * 60, 21 * 60),
}

# ---- understanding what a small model passes --------------------------------------------------

_DAY_ALIASES = {
    "mon": "monday", "tue": "tuesday", "tues": "tuesday", "wed": "wednesday",
    "weds": "wednesday", "thu": "thursday", "thur": "thursday", "thurs": "thursday",
    "fri": "friday", "sat": "saturday", "sun": "sunday",
}
_NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
}
_MINUTE_WORDS = {
    "oh five": 5, "o five": 5, "ten": 10, "fifteen": 15, "twenty": 20, "thirty": 30,
    "forty five": 45, "forty": 40, "fifty": 50,
}


def today() -> dt.date:
    return dt.date.today()


def parse_day(text: str) -> str:
    """A weekday name ("friday") from what a caller or a model says: "Friday", "this friday",
    "Fri", "tomorrow", "tonight", "2026-05-15"."""
    raw = str(text).strip().lower()
    if not raw:
        raise ToolError("which day? Say a weekday, like Friday")
    try:
        return DAYS[dt.date.fromisoformat(raw[:10]).weekday()]
    except ValueError:
        pass
    words = re.findall(r"[a-z]+", raw)
    for word in words:
        if word in DAYS:
            return word
        if word.endswith("s") and word[:-1] in DAYS:  # "fridays"
            return word[:-1]
        if word in _DAY_ALIASES:
            return _DAY_ALIASES[word]
    if any(w in ("today", "tonight") for w in words):
        return DAYS[today().weekday()]
    if "tomorrow" in words:
        return DAYS[(today().weekday() + 1) % 7]
    raise ToolError(f"I did not understand the day {text!r}: say a weekday, like Friday")


def parse_time(text: str) -> int:
    """Minutes after midnight from "7pm", "7:30 pm", "19:00", "1930", "seven", "seven thirty",
    "half past seven", "quarter to eight", "noon". A bare hour from 1 to 11 is in the afternoon
    or evening (the restaurant opens at noon)."""
    raw = str(text).strip().lower()
    t = re.sub(r"[.,]", lambda m: ":" if m.group() == "." else " ", raw)
    t = re.sub(r"\b(at|around|about|for|o'?clock|oclock|sharp|ish)\b", " ", t)
    t = t.replace("p:m:", "pm").replace("a:m:", "am").replace("-", " ")
    pm = bool(re.search(r"\b(pm|p m|evening|tonight|night|afternoon)\b", t)) or t.endswith("pm")
    am = bool(re.search(r"\b(am|a m|morning)\b", t)) or t.endswith("am")
    t = re.sub(r"(am|pm)\b", " ", t)
    t = re.sub(r"\b(in the|evening|tonight|night|afternoon|morning|a m|p m)\b", " ", t)
    t = " ".join(t.split())
    hour: int | None = None
    minute = 0
    if t in ("noon", "midday"):
        hour = 12
    elif m := re.fullmatch(r"(\d{1,2})(?::(\d{2}))?(?::\d{2})?", t):
        hour, minute = int(m.group(1)), int(m.group(2) or 0)
    elif m := re.fullmatch(r"(\d{1,2})(\d{2})", t):  # "1930", "730"
        hour, minute = int(m.group(1)), int(m.group(2))
    elif m := re.fullmatch(r"(half|quarter) (past|to) (\w+)", t):
        base = _hour_word(m.group(3))
        if base is not None:
            delta = 30 if m.group(1) == "half" else 15
            if m.group(2) == "past":
                hour, minute = base, delta
            else:
                hour, minute = (base - 1) or 12, 60 - delta
    else:
        parts = t.split(" ", 1)
        base = _hour_word(parts[0])
        if base is not None:
            rest = parts[1] if len(parts) > 1 else ""
            if not rest:
                hour = base
            elif rest in _MINUTE_WORDS:
                hour, minute = base, _MINUTE_WORDS[rest]
            elif rest.isdigit() and int(rest) < 60:
                hour, minute = base, int(rest)
    if hour is None or not 0 <= hour <= 23 or not 0 <= minute < 60:
        raise ToolError(f"I did not understand the time {text!r}: say a time like 7pm or 19:00")
    if pm and hour < 12:
        hour += 12
    elif am and hour == 12:
        hour = 0
    elif not am and 1 <= hour <= 11:
        hour += 12  # "seven": the evening, not the morning
    return hour * 60 + minute


def _hour_word(word: str) -> int | None:
    if word.isdigit():
        return int(word)
    if word in ("noon", "midday"):
        return 12
    return _NUMBER_WORDS.get(word)


def clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def name_key(name: str) -> str:
    """The name a booking is found by: case, spaces, quotes and titles left out."""
    words = re.findall(r"[\w'-]+", str(name).lower())
    words = [w for w in words if w not in ("mr", "mrs", "ms", "miss", "dr", "the", "family")]
    return " ".join(words)


def _party(people: int) -> int:
    if people < 1:
        raise ToolError("how many people? At least one")
    if people > LARGEST_PARTY:
        raise ToolError(f"parties over {LARGEST_PARTY} are booked by our events team: "
                        "transfer the caller to events")
    return people


def _open_for_booking(day: str, at: int) -> str | None:
    """Why ``at`` on ``day`` cannot be booked, or None."""
    hours = HOURS[day]
    if hours is None:
        return f"we are closed on {day.title()}s"
    opens, closes = hours
    last = closes - LAST_BOOKING_BEFORE_CLOSE_MIN
    if not opens <= at <= last:
        return (f"on {day.title()} we take bookings from {clock(opens)} to {clock(last)} "
                f"(open {clock(opens)} to {clock(closes)})")
    return None


# ---- the database -----------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tables (
    number INTEGER PRIMARY KEY,
    seats INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bookings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    call_key TEXT NOT NULL UNIQUE,          -- ToolContext.key: one booking per call
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    day TEXT NOT NULL,
    at_min INTEGER NOT NULL,
    people INTEGER NOT NULL,
    table_number INTEGER NOT NULL REFERENCES tables(number),
    answer TEXT NOT NULL DEFAULT '',        -- what the call answered, for a repeated call
    cancelled_by TEXT,                      -- the cancelling call's key; NULL: it stands
    created_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS bookings_by_day ON bookings(day, cancelled_by);
CREATE INDEX IF NOT EXISTS bookings_by_name ON bookings(name_key, cancelled_by);
CREATE TABLE IF NOT EXISTS cancellations (
    call_key TEXT PRIMARY KEY,              -- ToolContext.key: one cancellation per call
    answer TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS event_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    call_key TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    day TEXT NOT NULL,
    people INTEGER NOT NULL,
    notes TEXT NOT NULL DEFAULT '',
    answer TEXT NOT NULL DEFAULT '',
    created_ns INTEGER NOT NULL
);
"""

_ready: set[str] = set()
_ready_lock = threading.Lock()


def db_path() -> Path:
    return Path(os.environ.get(DB_ENV) or DEFAULT_DB).expanduser()


def connect() -> sqlite3.Connection:
    """A connection to ``FRONTDESK_DB`` (made, with its tables, on first use). Autocommit: each
    write opens its own ``BEGIN IMMEDIATE`` transaction."""
    path = db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None)
    conn.row_factory = sqlite3.Row
    key = str(path.resolve())
    with _ready_lock:
        if key not in _ready or not existed:
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            if conn.execute("SELECT COUNT(*) FROM tables").fetchone()[0] == 0:
                conn.executemany("INSERT INTO tables(number, seats) VALUES (?, ?)", TABLES)
            conn.execute("COMMIT")
            _ready.add(key)
    return conn


T = TypeVar("T")


async def _in_db(work: Callable[[sqlite3.Connection], T]) -> T:
    """``work`` on a connection of its own, off the event loop."""

    def run() -> T:
        conn = connect()
        try:
            return work(conn)
        finally:
            conn.close()

    return await asyncio.to_thread(run)


def _transaction(conn: sqlite3.Connection, work: Callable[[], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")  # one writer at a time, across processes
    try:
        out = work()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return out


def free_table(conn: sqlite3.Connection, day: str, at: int, people: int) -> int | None:
    """The smallest table seating ``people`` with no booking within a sitting of ``at``."""
    row = conn.execute(
        """SELECT number FROM tables t WHERE seats >= ? AND NOT EXISTS (
               SELECT 1 FROM bookings b WHERE b.table_number = t.number AND b.day = ?
               AND b.cancelled_by IS NULL AND ABS(b.at_min - ?) < ?)
           ORDER BY seats, number LIMIT 1""",
        (people, day, at, SITTING_MIN),
    ).fetchone()
    return int(row["number"]) if row else None


def _alternatives(conn: sqlite3.Connection, day: str, at: int, people: int) -> list[str]:
    """Up to three bookable times near ``at``, nearest first."""
    hours = HOURS[day]
    if hours is None:
        return []
    opens, closes = hours
    options = [m for m in range(opens, closes - LAST_BOOKING_BEFORE_CLOSE_MIN + 1, 30)
               if m != at and abs(m - at) <= 180]
    options.sort(key=lambda m: (abs(m - at), m))
    found = [m for m in options if free_table(conn, day, m, people) is not None]
    return [clock(m) for m in sorted(found[:3])]


# ---- the tools --------------------------------------------------------------------------------


@tool(read_only=True)
async def opening_hours(day: str = "") -> dict[str, Any]:
    """When the restaurant is open on a day (or every day of the week).

    Args:
        day: A weekday, like "Friday"; leave it empty for the whole week.
    """
    if not str(day).strip() or str(day).strip().lower() in ("week", "all", "every day"):
        return {d.title(): (f"{clock(h[0])} to {clock(h[1])}" if h else "closed")
                for d, h in HOURS.items()}
    name = parse_day(day)
    hours = HOURS[name]
    if hours is None:
        return {"day": name.title(), "open": False}
    return {"day": name.title(), "open": True, "opens": clock(hours[0]),
            "closes": clock(hours[1])}


@tool(read_only=True)
async def check_availability(day: str, time: str, people: int) -> dict[str, Any]:
    """Check whether a table is free. Call it before booking.

    Args:
        day: The weekday, like "Friday".
        time: The time, like "19:00" or "7pm".
        people: How many people.
    """
    name, at, party = parse_day(day), parse_time(time), _party(people)
    base = {"day": name.title(), "time": clock(at), "people": party}
    closed = _open_for_booking(name, at)
    if closed:
        return {**base, "available": False, "reason": closed}

    def look(conn: sqlite3.Connection) -> dict[str, Any]:
        table = free_table(conn, name, at, party)
        if table is not None:
            return {**base, "available": True, "table": table}
        return {**base, "available": False, "reason": "fully booked then",
                "other_times": _alternatives(conn, name, at, party)}

    return await _in_db(look)


@tool(timeout_s=10.0)
async def book_table(name: str, day: str, time: str, people: int,
                     ctx: ToolContext) -> dict[str, Any]:
    """Book a table. Only call it once the caller has asked to book and given a name.

    Args:
        name: The name the booking is under, as the caller said it.
        day: The weekday, like "Friday".
        time: The time, like "19:00" or "7pm".
        people: How many people.
    """
    who = " ".join(str(name).split()).strip(" \"'.")
    if not name_key(who):
        raise ToolError("what name should the booking be under?")
    when, at, party = parse_day(day), parse_time(time), _party(people)
    closed = _open_for_booking(when, at)
    if closed:
        raise ToolError(f"cannot book: {closed}")

    def book(conn: sqlite3.Connection) -> dict[str, Any]:
        def write() -> dict[str, Any]:
            kept = conn.execute("SELECT answer FROM bookings WHERE call_key = ?",
                                (ctx.key,)).fetchone()
            if kept is not None:  # this very call booked already: the same answer
                answer: dict[str, Any] = json.loads(kept["answer"])
                return answer
            table = free_table(conn, when, at, party)
            if table is None:
                others = _alternatives(conn, when, at, party)
                raise ToolError(f"no table for {party} on {when.title()} at {clock(at)}"
                                + (f"; free: {', '.join(others)}" if others else ""))
            cur = conn.execute(
                """INSERT INTO bookings(call_key, name, name_key, day, at_min, people,
                                        table_number, created_ns)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                (ctx.key, who, name_key(who), when, at, party, table, time_ns()),
            )
            answer = {"booked": True, "name": who, "day": when.title(), "time": clock(at),
                      "people": party, "table": table, "reference": f"FD-{cur.lastrowid:04d}"}
            conn.execute("UPDATE bookings SET answer = ? WHERE id = ?",
                         (json.dumps(answer), cur.lastrowid))
            return answer

        return _transaction(conn, write)

    return await _in_db(book)


@tool(timeout_s=10.0)
async def cancel_booking(name: str, ctx: ToolContext) -> dict[str, Any]:
    """Cancel the caller's booking, found by the name it is under.

    Args:
        name: The name the booking is under, as the caller said it.
    """
    key = name_key(name)
    if not key:
        raise ToolError("which name is the booking under?")

    def cancel(conn: sqlite3.Connection) -> dict[str, Any]:
        def write() -> dict[str, Any]:
            kept = conn.execute("SELECT answer FROM cancellations WHERE call_key = ?",
                                (ctx.key,)).fetchone()
            if kept is not None:
                answer: dict[str, Any] = json.loads(kept["answer"])
                return answer
            rows = conn.execute(
                """SELECT id, name, day, at_min, people FROM bookings
                   WHERE name_key = ? AND cancelled_by IS NULL ORDER BY id""", (key,)).fetchall()
            if not rows:
                raise ToolError(f"there is no booking under {name!r}")
            conn.executemany("UPDATE bookings SET cancelled_by = ? WHERE id = ?",
                             [(ctx.key, r["id"]) for r in rows])
            answer = {"cancelled": True, "name": rows[0]["name"], "bookings": [
                {"day": r["day"].title(), "time": clock(r["at_min"]), "people": r["people"]}
                for r in rows]}
            conn.execute("INSERT INTO cancellations(call_key, answer) VALUES (?, ?)",
                         (ctx.key, json.dumps(answer)))
            return answer

        return _transaction(conn, write)

    return await _in_db(cancel)


@tool(timeout_s=10.0)
async def request_event(name: str, day: str, people: int, ctx: ToolContext,
                        notes: str = "") -> dict[str, Any]:
    """Pass a large party's request to the events team, who call back to arrange it.

    Args:
        name: The caller's name, as they said it.
        day: The weekday, like "Saturday".
        people: How many guests.
        notes: Anything else the caller asked for (the occasion, a set menu).
    """
    who = " ".join(str(name).split()).strip(" \"'.")
    if not name_key(who):
        raise ToolError("what is the caller's name?")
    when = parse_day(day)
    if people < 1:
        raise ToolError("how many guests?")

    def request(conn: sqlite3.Connection) -> dict[str, Any]:
        def write() -> dict[str, Any]:
            kept = conn.execute("SELECT answer FROM event_requests WHERE call_key = ?",
                                (ctx.key,)).fetchone()
            if kept is not None:
                answer: dict[str, Any] = json.loads(kept["answer"])
                return answer
            cur = conn.execute(
                """INSERT INTO event_requests(call_key, name, day, people, notes, created_ns)
                   VALUES (?, ?, ?, ?, ?, ?)""",
                (ctx.key, who, when, people, str(notes)[:500], time_ns()))
            answer = {"requested": True, "name": who, "day": when.title(), "people": people,
                      "reference": f"EV-{cur.lastrowid:04d}",
                      "next": "the events team calls back within a day"}
            conn.execute("UPDATE event_requests SET answer = ? WHERE id = ?",
                         (json.dumps(answer), cur.lastrowid))
            return answer

        return _transaction(conn, write)

    return await _in_db(request)


# ---- the agents -------------------------------------------------------------------------------

# Voices: Kokoro (TTS_ENGINE=kokoro) has af_heart, am_michael and bf_emma
# (voxbus/services/tts/voices/); Piper (the default TTS_ENGINE) has only "joe", and falls back to
# it, with a warning, for any other name. So with Kokoro the two agents sound different; with
# Piper both speak as joe.
# The instructions name the tool for each request, and ask for the call rather than words about
# it: Qwen2.5-Coder-1.5B (voxbus eval's default model for agents with tools) otherwise often
# answers "To book a table, call check_availability with..." (first turns of eval.yaml's
# scenarios, one at a time: 9 of 13 right so, 6 with "use your tools").
frontdesk = Agent(
    name="frontdesk",
    instructions=(
        f"You are the front desk of {RESTAURANT}, a restaurant, on the phone. Be brief and "
        "friendly.\n"
        "You cannot know about tables, bookings or opening hours without a tool, so act with a "
        "tool call right away instead of describing it:\n"
        "- opening hours, or whether we are open on a day: opening_hours\n"
        "- whether a table is free: check_availability (day, time, people)\n"
        "- the caller asks to book and has said their name: book_table (name, day, time, "
        "people); never make up a name, ask for it\n"
        "- the caller wants to cancel: cancel_booking (name)\n"
        f"- more than {LARGEST_PARTY} people: transfer_to_events\n"
        "- the caller says goodbye or bye: end_call\n"
        "Give the day and the time in the caller's own words (\"next Tuesday\", \"half past "
        "seven\"). Small talk and questions about the food need no tool. If the day, the time "
        "or the number of people is missing, ask for it."
    ),
    voice="af_heart",
    # No greeting: the caller speaks first. A greeting is the first line of the conversation,
    # and Qwen2.5-Coder-0.5B then answered most requests by repeating it (2 of 13 first turns
    # right with it, 8 without, in a probe here).
    tools=[opening_hours, check_availability, book_table, cancel_booking],
    handoffs=["events"],
    temperature=0.0,
    max_tokens=96,
)

events = Agent(
    name="events",
    description=f"arranges parties of more than {LARGEST_PARTY} people: private dinners, "
                "birthdays, company evenings",
    instructions=(
        f"You are the events coordinator of {RESTAURANT}, a restaurant, on the phone. You "
        f"handle parties of more than {LARGEST_PARTY} people. Be brief and warm. "
        "Ask for the caller's name, the day and the number of guests, then call request_event; "
        "the events team calls back to agree the menu and the deposit. Call opening_hours for "
        f"when we are open. For a party of {LARGEST_PARTY} or fewer, call "
        "transfer_to_frontdesk. When the caller says goodbye, call end_call."
    ),
    voice="am_michael",
    tools=[request_event, opening_hours],
    handoffs=["frontdesk"],
    temperature=0.0,
    max_tokens=96,
)
