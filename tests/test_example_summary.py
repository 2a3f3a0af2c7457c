"""``examples/summarise_calls.py`` against a real nats-server and a real LLM stage worker (a
scripted engine): a call's finals in, after the call went quiet its summary out, asked of the
LLM stage as a turn of a session of its own."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from tests.conftest import REGION
from voxbus.contracts.messages import Transcript
from voxbus.runtime.bus import Bus
from voxbus.runtime.testing import running
from voxbus.services.llm.fake import FakeLLM, FakeTurn
from voxbus.services.llm.settings import LlmSettings
from voxbus.services.llm.stage import LlmStage

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "summarise_calls.py"


async def test_a_quiet_call_is_summarised_by_the_llm_stage(bus: Bus, nats_url: str) -> None:
    fake = FakeLLM([FakeTurn.words("The caller asked when the museum opens.")])
    async with running(bus, LlmStage(fake, LlmSettings())):
        now = time.time_ns()
        for turn, text in enumerate(("What time does the museum open?", "And on Sunday?"), 1):
            await bus.publish(REGION, Transcript(session="call1", turn=turn, seq=0, text=text,
                                                 is_final=True, speech_start_ns=now))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLE), "--region", REGION, "--idle", "1", "--once",
            env={**os.environ, "NATS_URL": nats_url}, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "call1: The caller asked when the museum opens."
    asked = fake.calls[0][0][-1]["content"] or ""
    assert "What time does the museum open? And on Sunday?" in asked
