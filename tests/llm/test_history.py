"""Conversation state: cutting a reply to what was heard, bounding it, compare-and-set in KV."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import REGION
from voxbus.runtime.bus import Bus
from voxbus.services.llm.engine import (
    ChatMessage,
    ToolCallDelta,
    assistant_message,
    tool_result_message,
)
from voxbus.services.llm.history import (
    History,
    HistoryLimits,
    HistoryStore,
    TurnRecord,
    reply_text,
    truncate_reply,
)

CALL = ToolCallDelta(id="c1", name="get_current_time", arguments="{}")
REPLY: list[ChatMessage] = [
    assistant_message("Let me check.", [CALL]),
    tool_result_message("c1", '{"time": "22:05"}'),
    assistant_message("It is 22:05."),
]


@pytest.mark.fast
def test_reply_text_joins_rounds_with_a_space() -> None:
    assert reply_text(REPLY) == "Let me check. It is 22:05."


@pytest.mark.fast
def test_truncate_inside_the_last_round_keeps_the_tool_traffic() -> None:
    cut = truncate_reply(REPLY, len("Let me check. It is"))
    assert cut[:2] == REPLY[:2]
    assert cut[2] == {"role": "assistant", "content": "It is"}


@pytest.mark.fast
def test_truncate_before_a_tool_call_keeps_the_call_and_its_result() -> None:
    calls = REPLY[0]["tool_calls"]
    assert truncate_reply(REPLY, 3) == [
        {"role": "assistant", "content": "Let", "tool_calls": calls}, REPLY[1]]
    assert truncate_reply(REPLY, 0) == [
        {"role": "assistant", "content": None, "tool_calls": calls}, REPLY[1]]
    assert truncate_reply(REPLY, len("Let me check.")) == REPLY[:2]
    assert truncate_reply(REPLY, 1000) == REPLY


async def test_updates_are_compare_and_set(bus: Bus) -> None:
    store = HistoryStore(await bus.state(REGION))
    await store.begin_turn("s1", 1, "Hello?")
    # a reply and a cut of that reply, written concurrently: both land, in either order
    await asyncio.gather(
        store.set_reply("s1", 1, [assistant_message("Hi there, how are you?")]),
        store.mark_spoken("s1", 1, len("Hi there,")),
        store.begin_turn("s1", 2, "Fine."),
    )
    history = await store.load("s1")
    assert history.messages() == [
        {"role": "user", "content": "Hello?"},
        {"role": "assistant", "content": "Hi there,"},
        {"role": "user", "content": "Fine."},
    ]


async def test_history_is_bounded_with_hysteresis(bus: Bus) -> None:
    store = HistoryStore(await bus.state(REGION), HistoryLimits(max_turns=4))
    kept = []
    for n in range(1, 8):
        history = await store.begin_turn("s1", n, f"turn {n}")
        kept.append([r.turn for r in history.turns])
    # past 4 turns it drops to 2 at once, so the prompt's prefix changes only now and then
    assert kept == [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4], [4, 5], [4, 5, 6], [4, 5, 6, 7]]


@pytest.mark.fast
def test_a_reply_plays_until_the_bridge_says_what_was_heard() -> None:
    said: list[ChatMessage] = [{"role": "assistant", "content": "We open at nine."}]
    history = History(turns=[TurnRecord(turn=0, user="", reply=said, heard=False),
                             TurnRecord(turn=1, user="When?", reply=said, heard=False)])
    assert history.reply_playing(2)
    history.turns[1].heard = True
    assert not history.reply_playing(2)
    history.turns[1].heard = None  # a record older than the field: taken as heard
    assert not history.reply_playing(2)
    history.turns[1] = TurnRecord(turn=1, user="When?", heard=False)  # no words: nothing plays
    assert not history.reply_playing(2)
    assert not History(turns=history.turns[:1]).reply_playing(1)  # the greeting is no reply
