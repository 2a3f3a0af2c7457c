"""A scripted model for the agent tests, as an OpenAI-compatible server (the LLM stage's
``openai`` backend talks to it over HTTP, in this process or from a replica's): it books when
asked, hands large parties to ``events``, and answers from the tool results it is given."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tests.llm.scripted_openai_server import Step, text_chunk, tool_chunk


def _say(text: str) -> list[Step]:
    words = text.split(" ")
    return [(0.0, text_chunk(w if i == 0 else " " + w)) for i, w in enumerate(words)] + [
        (0.0, text_chunk(finish="stop")), (0.0, "[DONE]")]


def _call(name: str, arguments: dict[str, Any]) -> list[Step]:
    return [(0.0, tool_chunk(0, call_id="call_scripted", name=name)),
            (0.0, tool_chunk(0, arguments=json.dumps(arguments))),
            (0.0, text_chunk(finish="tool_calls")), (0.0, "[DONE]")]


def desk_model(body: dict[str, Any]) -> Sequence[Step]:
    messages = body["messages"]
    system, last = messages[0]["content"] or "", messages[-1]
    offered = {t["function"]["name"] for t in body.get("tools") or []}
    if "large parties" in system:
        return _say("Events team here, how many guests?")
    if last["role"] == "tool":
        result = json.loads(last["content"])
        if result.get("booked"):
            return _say(f"Booked under {result['name']}, booking {result['booking']}.")
        if "result" in result:
            return _say(f"We are open {result['result']}.")
        if "transferred" in str(result.get("status", "")):
            return _say("I am passing you to our events team.")
        if "transferring" in str(result.get("status", "")):
            return _say("One moment, I am putting you through to the manager.")
        return _say(f"Sorry, that did not work: {result.get('error', result)}.")
    user = (last["content"] or "").lower()
    if "manager" in user and "transfer_call" in offered:
        return _call("transfer_call", {"to": "owner" if "owner" in user else "manager"})
    if "party" in user and "transfer_to_events" in offered:
        return _call("transfer_to_events", {})
    if "hours" in user and "opening_hours" in offered:
        return _call("opening_hours", {"day": "Monday" if "monday" in user else "Friday"})
    if "book" in user and "book_table" in offered:
        return _call("book_table", {"name": "Rossi", "people": 4})
    return _say("Hello, how can I help?")
