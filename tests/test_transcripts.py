"""``voxbus transcripts`` on a real nats-server: finals only, a restarted reader resumes where
it stopped, ``--since`` starts over, ``--session`` and ``--agent`` select, and a purge is
announced to a following reader, which prints nothing of the session after it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from tests.conftest import REGION
from voxbus.contracts.messages import ReplyEnd, Transcript
from voxbus.ops.purge import purge_session
from voxbus.runtime.bus import Bus


def final(session: str, turn: int, text: str, *, is_final: bool = True) -> Transcript:
    now = time.time_ns()
    return Transcript(session=session, turn=turn, seq=0, text=text, is_final=is_final,
                      speech_start_ns=now, speech_end_ns=now)


def _env(nats_url: str) -> dict[str, str]:
    return {**os.environ, "NATS_URL": nats_url, "VOXBUS_REGIONS": REGION,
            "VOXBUS_PARTITIONS": "8"}


async def transcripts(nats_url: str, *args: str) -> list[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voxbus.cli", "transcripts", "--jsonl", *args, env=_env(nats_url),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    # a drain that timed out on the reader's subscription (10 s) left a traceback here
    assert b"Traceback" not in err, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()]


async def test_finals_resume_since_session_and_agent(bus: Bus, nats_url: str) -> None:
    await bus.publish(REGION, final("ta", 1, "when do you", is_final=False))
    await bus.publish(REGION, final("ta", 1, "When do you open?"))
    await bus.publish(REGION, ReplyEnd(session="ta", turn=1, text="At nine."))
    await bus.publish(REGION, final("tb", 1, "Book a taxi."))
    first = await transcripts(nats_url)
    assert [(r["session"], r["turn"], r["speaker"], r["text"]) for r in first] == [
        ("ta", 1, "user", "When do you open?"), ("tb", 1, "user", "Book a taxi.")]
    assert all(r["event"] == "transcript" and r["region"] == REGION for r in first)
    assert await transcripts(nats_url) == [], "a restarted reader printed old ones again"
    await bus.publish(REGION, final("ta", 2, "And on Sunday?"))
    assert [r["text"] for r in await transcripts(nats_url)] == ["And on Sunday?"]
    again = await transcripts(nats_url, "--since", "1h", "--session", "ta", "--agent")
    assert [(r["speaker"], r["text"]) for r in again] == [
        ("user", "When do you open?"), ("agent", "At nine."), ("user", "And on Sunday?")]


async def test_a_following_reader_hears_the_purge_and_prints_nothing_after(
    bus: Bus, nats_url: str
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voxbus.cli", "transcripts", "--jsonl", "--follow", "--reader",
        "3", env=_env(nats_url), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        await bus.publish(REGION, final("pz", 1, "My card number is four two."))
        line = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert (line["session"], line["text"]) == ("pz", "My card number is four two.")
        await purge_session(bus, REGION, "pz", grace_s=0.3)
        line = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert line["event"] == "purged" and line["session"] == "pz"
        await bus.publish(REGION, final("pz", 2, "And the code."))
        await bus.publish(REGION, final("other", 1, "Hello."))
        line = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert (line["session"], line["text"]) == ("other", "Hello."), line
    finally:
        proc.terminate()
        await proc.wait()


async def test_bad_arguments_are_one_line(nats_url: str) -> None:
    for args, msg in ((["--since", "yesterday"], "--since 'yesterday'"),
                      (["--region", "EU"], "invalid region name"),
                      (["--reader", "9"], "--reader must be 0-7")):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voxbus.cli", "transcripts", *args, env=_env(nats_url),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        lines = err.decode().strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and msg in lines[0], lines
