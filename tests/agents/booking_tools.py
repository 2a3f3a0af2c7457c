"""A test agent whose one side-effecting tool is slow: it books at once (keyed on the call's
idempotency key) and then takes ``BOOKING_SLOW_S`` more ("sending the confirmation"), so a kill
lands after the side effect and before the outcome is kept. Every start of the tool is recorded
too, to show a call was run again."""

from __future__ import annotations

import asyncio
import os
import sqlite3

from voxbus.agents import Agent, ToolContext, tool


def _db() -> sqlite3.Connection:
    db = sqlite3.connect(os.environ["BOOKINGS_DB"], timeout=10, isolation_level=None)
    db.execute("CREATE TABLE IF NOT EXISTS bookings (key TEXT UNIQUE, name TEXT, people INT)")
    db.execute("CREATE TABLE IF NOT EXISTS starts (key TEXT, pid INT)")
    return db


@tool(filler="One moment while I book that.", filler_after_s=0.3, timeout_s=8.0)
async def book_table(name: str, people: int, ctx: ToolContext) -> dict[str, object]:
    """Book a table.

    Args:
        name: The name the booking is under.
        people: How many people.
    """
    with _db() as db:
        db.execute("INSERT INTO starts VALUES (?, ?)", (ctx.key, os.getpid()))
        db.execute("INSERT OR IGNORE INTO bookings VALUES (?, ?, ?)", (ctx.key, name, people))
        (booking,) = db.execute("SELECT rowid FROM bookings WHERE key = ?", (ctx.key,)).fetchone()
    await asyncio.sleep(float(os.environ.get("BOOKING_SLOW_S", "0")))
    return {"booked": True, "booking": booking, "name": name, "people": people}


@tool(read_only=True)
def opening_hours(day: str) -> str:
    """When the restaurant is open on a day.

    Args:
        day: A weekday.
    """
    return "closed" if day.lower() == "monday" else "12:00-23:00"


desk = Agent(name="desk", instructions="You are the front desk of a restaurant.",
             voice="desk-voice", tools=[book_table, opening_hours], handoffs=["events"],
             transfers={"manager": "tel:+15550199"})
events = Agent(name="events", instructions="You plan events for large parties.",
               voice="events-voice", greeting="")
