"""Two real LLM replicas (``python -m voxbus.services.llm``: llama.cpp, SmolLM2) on a real
nats-server. A user turn comes in; the replica answering it is killed (-9) a few text deltas in,
or before its first one. The survivor answers the turn again with the same seed and the same
conversation, so the same words with the same sequence numbers: the stream keeps each delta
once, the spans join up, and the reply ends once with the text the deltas spell."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.stages import REGION, owner_pid, report, stored, two_replicas
from voxbus.contracts import streams
from voxbus.contracts.messages import EndOfTurn, ReplyEnd, ReplyText
from voxbus.runtime.bus import Bus
from voxbus.runtime.testing import Tap

pytestmark = pytest.mark.model

LONG_STORY = (
    "Hi, so last week my sister came to visit and we tried to have dinner at your place on "
    "Friday, but when we arrived the host said there was no record of our booking, even though "
    "I had a confirmation email on my phone, and we ended up waiting almost forty minutes at the "
    "bar before a table opened up near the kitchen door, which was noisy and cold. The food was "
    "lovely once it came, especially the mushroom risotto and the lemon tart, and the waiter was "
    "very kind about the whole thing, so I would like to give you another chance this weekend "
    "with my parents, who are visiting from out of town and who do not like to wait."
)


@pytest.fixture
async def llm_pair(tmp_path: Path) -> AsyncIterator[tuple[Bus, list[subprocess.Popen[bytes]]]]:
    async with two_replicas("llm", tmp_path, env={"LLM_MAX_TOKENS": "120"}) as pair:
        yield pair


@pytest.mark.parametrize("kill_at", ["mid_reply", "before_its_first_text"])
async def test_a_killed_llm_replica_repeats_no_clause(
    llm_pair: tuple[Bus, list[subprocess.Popen[bytes]]], kill_at: str,
) -> None:
    bus, _procs = llm_pair
    session = f"llm-kill-{kill_at.replace('_', '-')}"
    tap = await Tap.on_bus(bus, REGION, f"{session}.llm.>")
    question = ("Can you tell me about your opening hours and how I can book a table for four "
                "people tonight?")
    if kill_at == "before_its_first_text":
        # a caller who explains at length: reading these words takes the engine about half a
        # second (the system prompt was read at start), so the kill lands while it reads them
        question = LONG_STORY + " " + question
    await bus.publish(REGION, EndOfTurn(
        session=session, turn=1, transcript=question, speech_start_ns=0, speech_end_ns=0))
    if kill_at == "mid_reply":
        await tap.until(lambda t: len(t.of(ReplyText, session)) >= 3, timeout_s=60)
    else:  # the turn is taken (the prompt being read), nothing said yet
        await asyncio.sleep(0.1)
        assert not tap.of(ReplyText, session)
    os.kill(await owner_pid(bus, "llm", session), signal.SIGKILL)
    killed = time.monotonic()
    before = len(tap.of(ReplyText, session))
    await tap.until(lambda t: len(t.of(ReplyEnd, session)) >= 1, timeout_s=60)
    await asyncio.sleep(1.0)

    kept = await stored(bus, session, streams.text_stream(REGION))
    deltas = [m for m in kept if isinstance(m, ReplyText)]
    ends = [m for m in kept if isinstance(m, ReplyEnd)]
    assert [d.seq for d in deltas] == list(range(len(deltas))), "a delta twice, or lost"
    for a, b in zip(deltas, deltas[1:], strict=False):
        assert b.char_start == a.char_end, f"spans do not join: {a} then {b}"
    assert len(ends) == 1
    assert ends[0].text == "".join(d.text for d in deltas)
    new = [at for at, m in tap.timed(ReplyText) if m.seq >= before]
    assert new, "no text after the kill"
    report(f"llm killed {kill_at.replace('_', ' ').replace('mid reply', 'mid-reply')}",
           gap_s=min(new) - killed,
           duplicates=0, deltas=len(deltas),
           copies_on_core_nats=len(tap.of(ReplyText, session)) - len(deltas))
