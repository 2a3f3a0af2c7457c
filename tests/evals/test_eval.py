"""``voxbus eval`` on a real nats-server, against the running stages (``NATS_URL``): the LLM stage
on a scripted engine that answers by the caller's words, and the frontdesk example's real tool
worker on a SQLite file of the test. A turn whose calls, handoff and reply are as expected
passes, one that differs fails with its reasons, and the exit status says whether all passed."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REGION
from voxbus.agents.loader import load
from voxbus.runtime.bus import Bus
from voxbus.runtime.testing import running
from voxbus.services.llm.engine import (
    ChatMessage,
    FinishDelta,
    LLMDelta,
    Sampling,
    TextDelta,
    ToolCallDelta,
    ToolSpec,
)
from voxbus.services.llm.settings import LlmSettings
from voxbus.services.llm.stage import LlmStage
from voxbus.services.tools.stage import ToolsStage

AGENT = Path(__file__).resolve().parents[2] / "examples" / "frontdesk" / "agent.py"


def call(tool: str, /, **args: Any) -> ToolCallDelta:
    return ToolCallDelta(id=f"c-{tool}", name=tool, arguments=json.dumps(args))


#: What the scripted model does after the caller's words: the calls of its first round, then
#: its words (after the tool results, if it called any).
SCRIPT: dict[str, tuple[list[ToolCallDelta], str]] = {
    "table for four on friday at seven": (
        [call("check_availability", day="this Friday", time="7pm", people=4)],
        "Yes, we have a table for four on Friday at seven."),
    "book it for rossi": (
        [call("book_table", name="Rossi", day="Friday", time="19:00", people=4)],
        "Done, booked under Rossi."),
    "how are you": ([], "Very well, thank you!"),
    "we are twelve": ([call("transfer_to_events")], "Let me pass you to our events team."),
    "bye": ([call("end_call")], "Goodbye!"),
}


class ByCaller:
    """A scripted engine that answers by the caller's last words (``SCRIPT``), whatever the
    order the sessions come in."""

    def __init__(self) -> None:
        self.prompts: list[list[ChatMessage]] = []

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] | None = None,
        sampling: Sampling | None = None,
    ) -> AsyncGenerator[LLMDelta, None]:
        self.prompts.append(list(messages))
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        said = str(messages[users[-1]]["content"] or "").lower() if users else ""
        calls, words = next((v for k, v in SCRIPT.items() if k in said), ([], "Sorry?"))
        first_round = users and users[-1] == len(messages) - 1
        if first_round and calls and tools:
            for c in calls:
                yield c
            yield FinishDelta("tool_calls")
            return
        for i, word in enumerate(words.split(" ")):
            await asyncio.sleep(0)
            yield TextDelta(word if i == 0 else " " + word)
        yield FinishDelta("stop")

    async def warmup(self, messages: Sequence[ChatMessage] = ()) -> None:
        return None

    async def aclose(self) -> None:
        return None


PASSING = """
module: {agent}
agent: frontdesk
scenarios:
  - name: book for four
    turns:
      - user: "A table for four on Friday at seven, please?"
        expect:
          tools: [{{name: check_availability, args: {{people: 4, day: this friday}}}}]
          not_tools: [book_table]
      - user: "Lovely, book it for Rossi."
        expect:
          tools: [{{name: book_table, args: {{name: rossi, people: "4"}}, ok: true}}]
          reply_matches: "(?i)rossi"
          handoff: null
      - user: "Bye!"
        expect: {{tools: [end_call], end_call: true}}
  - name: small talk and a party
    turns:
      - user: "How are you today?"
        expect: {{tools: []}}
      - user: "We are twelve, for a birthday."
        expect: {{handoff: events}}
"""

FAILING = """
module: {agent}
agent: frontdesk
scenarios:
  - name: wrong expectations
    turns:
      - user: "A table for four on Friday at seven, please?"
        expect: {{tools: [{{name: check_availability, args: {{people: 6}}}}]}}
      - user: "How are you?"
        expect: {{tools: [], reply_matches: "(?i)booked"}}
      - user: "We are twelve."
        expect: {{handoff: null}}
      - user: "Bye."
        expect: {{tools: [end_call]}}
"""


@pytest.fixture
async def stages(bus: Bus, nats_url: str, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ByCaller]:
    """The scripted LLM stage and the frontdesk tool worker on the bus; ``voxbus eval`` pointed
    at them."""
    for name in [k for k in os.environ if k.startswith(("VOXBUS_", "NATS_", "LLM_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("NATS_URL", nats_url)
    monkeypatch.setenv("VOXBUS_REGION", REGION)
    monkeypatch.setenv("VOXBUS_PARTITIONS", "8")
    monkeypatch.setenv("FRONTDESK_DB", str(tmp_path / "frontdesk.sqlite3"))
    engine = ByCaller()
    module = load(str(AGENT))
    async with running(bus, LlmStage(engine, LlmSettings(temperature=0.0))), \
            running(bus, ToolsStage(module.tools, replica="test")):
        yield engine


def scenario_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "eval.yaml"
    path.write_text(text.format(agent=AGENT))
    return path


@dataclass(frozen=True)
class Ran:
    rc: int
    out: str
    err: str


async def run_eval(*argv: str) -> Ran:
    """``voxbus eval ...`` as the command line runs it: a process of its own (not a thread of
    this one: CPython 3.11 compiling in two threads at once can corrupt its AST state, and a
    later ``ast.parse`` here fails with "AST constructor recursion depth mismatch")."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voxbus.cli", "eval", *argv, env=dict(os.environ),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


async def test_expected_turns_pass(stages: ByCaller, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results" / "eval.json"
    ran = await run_eval(str(scenario_file(tmp_path, PASSING)), "--json", str(out))
    printed = ran.out
    assert ran.rc == 0, printed + ran.err
    lines = printed.strip().splitlines()
    assert lines[-1] == "5/5 turns passed"
    assert sum(line.startswith("[") and " PASS " in line for line in lines) == 5  # progress
    assert any(line.startswith("book for four") and "book_table(" in line for line in lines)

    report = json.loads(out.read_text())
    assert report["summary"]["passed"] == 5 and report["summary"]["turns"] == 5
    turns = report["turns"]
    assert [t["passed"] for t in turns] == [True] * 5
    book = turns[1]
    assert book["tools"][0]["name"] == "book_table" and book["tools"][0]["ok"] is True
    assert book["reply"] == "Done, booked under Rossi." and book["agent"] == "frontdesk"
    assert book["latency_s"]["reply_end"] >= book["latency_s"]["first_text"] > 0
    assert turns[4]["handoff"] == "events"
    assert turns[2]["end_call"] is True
    assert len({t["session"] for t in turns}) == 2  # a session per scenario
    # The real tool worker booked it, in the test's database.
    with sqlite3.connect(os.environ["FRONTDESK_DB"]) as conn:
        assert conn.execute("SELECT name, people FROM bookings").fetchall() == [("Rossi", 4)]
    # Each scenario is a conversation of its own: the second one's first prompt has no history.
    second = next(p for p in stages.prompts if "How are you today?" in str(p[-1]["content"]))
    assert [m["role"] for m in second] == ["system", "user"]


async def test_unexpected_turns_fail_with_reasons(stages: ByCaller, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval.json"
    ran = await run_eval(str(scenario_file(tmp_path, FAILING)), "--json", str(out))
    printed = ran.out
    assert ran.rc == 1, printed + ran.err
    assert printed.strip().splitlines()[-1] == "1/4 turns passed"
    turns = json.loads(out.read_text())["turns"]
    assert [t["passed"] for t in turns] == [False, False, False, True]
    assert turns[0]["reasons"] == [
        "expected check_availability(people=6), called "
        "check_availability(day=this Friday, time=7pm, people=4)"]
    assert turns[1]["reasons"] == ["reply does not match /(?i)booked/"]
    assert turns[2]["reasons"] == ["expected no handoff, got one to events"]
    assert "failed:" in printed and "reply does not match" in printed


async def test_an_agent_not_in_the_module_is_one_line(
        stages: ByCaller, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = scenario_file(tmp_path, PASSING.replace("agent: frontdesk", "agent: concierge"))
    ran = await run_eval(str(path))
    assert ran.rc == 2
    err = ran.err.strip()
    assert err.startswith("voxbus eval: ") and "'concierge' is not defined" in err
    assert len(err.splitlines()) == 1


async def test_a_turn_without_reply_fails_and_the_rest_are_not_run(
        bus: Bus, nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """No LLM stage runs: the first turn waits ``--timeout`` for nothing."""
    monkeypatch.setenv("NATS_URL", nats_url)
    monkeypatch.setenv("VOXBUS_REGION", REGION)
    monkeypatch.setenv("VOXBUS_PARTITIONS", "8")
    path = scenario_file(tmp_path, FAILING)
    ran = await run_eval(str(path), "--timeout", "0.5", "-k", "wrong")
    printed = ran.out
    assert ran.rc == 1, printed + ran.err
    assert "no reply in 0.5 s" in printed and "not run: turn 1 got no reply" in printed
    assert printed.strip().splitlines()[-1] == "0/4 turns passed"
