"""``voxbus eval FILE``: run an agent's scripted conversations (FILE: YAML, see
``voxbus.evals.scenarios``) through the real stages and check each turn: the tools it called and
their arguments, a handoff, the words of the reply; and time it (from the turn's end to the
reply's first text and to its end).

Without ``NATS_URL`` it starts what it needs, as the demo does, and stops it after: an embedded
nats-server, the LLM stage (``voxbus llm``, ``LLM_MODEL_NAME`` from ``--model``; default
``qwen-1.5b`` when the agents have tools, since SmolLM2 cannot call them; temperature 0 unless
``LLM_TEMPERATURE`` says otherwise) and the module's tool worker (``voxbus tools MODULE``, with
the file's ``env``, where ``{run_dir}`` is a fresh directory of this run), one replica each, on
leases of 10 s (a loaded machine must not make a stage fence itself mid-turn: there is no other
replica to take over). With ``NATS_URL`` it uses the stages running there (region:
``VOXBUS_REGION``, else ``local``).

Each scenario is a session of its own; the module's agents are published to the region first.
Exit status: 0 when every turn passed, 1 when one failed, 2 for bad input (a missing or bad
file, an unknown agent, a module that does not import, a model that is not installed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxbus.agents.loader import AgentModule, load
from voxbus.agents.registry import AgentRegistry
from voxbus.contracts.streams import Retention, agents_bucket
from voxbus.errors import UserError
from voxbus.evals import scenarios
from voxbus.evals.runner import TurnResult, run_file, summary, warm_up
from voxbus.evals.scenarios import EvalFile
from voxbus.runtime.bus import Bus

#: The model an eval starts for agents with tools (SmolLM2 cannot call them).
TOOLS_MODEL = "qwen-1.5b"
#: The lease ttl of the stack it starts (one replica of each stage): a model reading a long
#: prompt on a loaded machine once kept a stage from renewing a 2 s lease, so it fenced itself
#: and redid the turn (four times, 146 s); nobody else could take the partition anyway.
LOCAL_LEASE_TTL_S = 10.0
#: Columns of the table.
_REPLY_WIDTH = 48
_TOOLS_WIDTH = 52


@dataclass
class Run:
    """Where the conversations ran."""

    nats: str
    region: str
    model: str = ""
    stages: list[str] = field(default_factory=list)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voxbus eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="the scenario file (YAML)")
    p.add_argument("--json", metavar="OUT", help="write each turn's result to OUT (JSON)")
    p.add_argument("--model", metavar="NAME",
                   help=f"LLM_MODEL_NAME of the LLM stage it starts (default: {TOOLS_MODEL} "
                        "when the agents have tools, else the stage's default)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="the longest wait for one turn's reply (default 300 s)")
    p.add_argument("--logs", metavar="DIR",
                   help="keep the logs of the stages it starts in DIR (llm.log, tools.log; "
                        "with what was said and answered: the lines are scripted)")
    p.add_argument("-k", "--scenario", action="append", default=[], metavar="TEXT",
                   help="only the scenarios whose name contains TEXT (repeatable)")
    p.add_argument("--audio", action="store_true",
                   help="speak each line with a TTS voice and send it through the STT "
                        "(not available yet)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.audio:
        raise UserError("--audio is not available yet: the turns go to the LLM stage as text")
    if args.timeout <= 0:
        raise UserError("--timeout must be positive")
    file = scenarios.read(args.file)
    if args.scenario:
        chosen = tuple(s for s in file.scenarios if any(k in s.name for k in args.scenario))
        if not chosen:
            raise UserError(f"{file.path}: no scenario's name contains "
                            f"{' or '.join(map(repr, args.scenario))}")
        file = EvalFile(path=file.path, module=file.module, agent=file.agent, scenarios=chosen,
                        env=file.env)
    spec = scenarios.module_spec(file)
    module = load(spec)  # a module that fails to import: one line
    for name in sorted(file.agents):
        if name not in module.agents:
            raise UserError(f"{file.path}: agent {name!r} is not defined in {file.module} "
                            f"(it defines {', '.join(sorted(module.agents)) or 'no agent'})")

    from voxbus.runtime import logging

    logging.configure(os.environ.get("VOXBUS_LOG_LEVEL") or "warning")  # stdout: the results
    say(f"voxbus eval: {file.path}: {len(file.scenarios)} scenarios, {file.turns} turns, "
        f"agents {', '.join(sorted(file.agents))} of {file.module}")
    started = time.time()
    results, run = asyncio.run(_run(file, spec, module, args))
    say("")
    for line in table(results):
        say(line)
    failed = [r for r in results if not r.passed]
    if failed:
        say("")
        say("failed:")
        for r in failed:
            say(f"  {r.scenario} #{r.turn} ({r.user!r}):")
            for reason in r.reasons:
                say(f"    - {reason}")
            if r.reply:
                say(f"    reply: {r.reply!r}")
    totals = summary(results)
    lat = totals["latency_s"]
    say("")
    say(f"latency (end of turn to reply end): p50 {_s(lat['reply_end']['p50'])}, p95 "
        f"{_s(lat['reply_end']['p95'])}; to the first text: p50 "
        f"{_s(lat['first_text']['p50'])}, p95 {_s(lat['first_text']['p95'])}"
        + (f"  ({run.model})" if run.model else ""))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "file": str(file.path), "module": file.module, "model": run.model,
            "nats": run.nats, "region": run.region, "stages": run.stages,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "seconds": round(time.time() - started, 1), "summary": totals,
            "turns": [r.to_json() for r in results],
        }, indent=2, ensure_ascii=False) + "\n")
        say(f"results: {out}")
    say(f"{totals['passed']}/{totals['turns']} turns passed")
    return 0 if not failed else 1


def say(line: str) -> None:
    print(line, flush=True)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def progress_line(r: TurnResult, index: int, total: int) -> str:
    mark = "PASS" if r.passed else "FAIL"
    took = f"{r.reply_s:.2f} s" if r.reply_s is not None else "no reply"
    return (f"[{index:>{len(str(total))}}/{total}] {mark}  {r.scenario} #{r.turn}  "
            f"{_cut(r.tools_text, _TOOLS_WIDTH)}  {took}")


def table(results: list[TurnResult]) -> list[str]:
    """One row per turn: scenario, turn, result, tools called, the reply (cut)."""
    rows = [("scenario", "turn", "result", "tools", "reply")]
    for r in results:
        tools = r.tools_text + (f" -> {r.handoff}" if r.handoff else "")
        rows.append((r.scenario, str(r.turn), "PASS" if r.passed else "FAIL",
                     _cut(tools, _TOOLS_WIDTH), _cut(r.reply, _REPLY_WIDTH) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return ["  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row))
            .rstrip() for row in rows]


# ---- running ----------------------------------------------------------------------------------


async def _run(file: EvalFile, spec: str, module: AgentModule,
               args: argparse.Namespace) -> tuple[list[TurnResult], Run]:
    total = sum(len(s.turns) for s in file.scenarios)
    done = 0

    def on_turn(r: TurnResult) -> None:
        nonlocal done
        done += 1
        say(progress_line(r, done, total))

    greetings = {name: bool(a.greeting) for name, a in module.agents.items()}
    if os.environ.get("NATS_URL"):
        if args.model:
            say(f"  (--model {args.model} is ignored: NATS_URL is set, the running LLM stage "
                "answers)")
        if file.env:
            say("  (the file's env is ignored: NATS_URL is set, the running tool worker acts)")
        bus, run = await _connect()
        try:
            await _publish(bus, run.region, module, file)
            results = await run_file(bus, run.region, file, timeout_s=args.timeout,
                                     greetings=greetings, on_turn=on_turn)
        finally:
            await bus.close()
        return results, run
    logs = Path(args.logs) if args.logs else None
    async with LocalStack(file, spec, _model(args.model, module, file), logs=logs) as stack:
        assert stack.bus is not None
        await _publish(stack.bus, stack.run.region, module, file)
        for name in sorted(file.agents):  # a cold stage reads each agent's prompt once
            warm = await warm_up(stack.bus, stack.run.region, name, timeout_s=args.timeout,
                                 greeting=greetings.get(name, False))
            took = f"{warm.reply_s:.1f} s" if warm.reply_s is not None else "no reply"
            say(f"  [llm] warm-up turn with {name} (not counted): {took}")
        results = await run_file(stack.bus, stack.run.region, file, timeout_s=args.timeout,
                                 greetings=greetings, on_turn=on_turn)
        return results, stack.run


async def _connect() -> tuple[Bus, Run]:
    from voxbus.runtime.serve import connect
    from voxbus.runtime.settings import BusSettings

    settings = BusSettings.from_env()
    region = settings.regions[0]
    bus = await connect(settings.for_region(region), name="voxbus-eval")
    say(f"  [nats] {settings.url_for(region)} (region {region}): the stages running there")
    return bus, Run(nats=settings.url_for(region), region=region)


async def _publish(bus: Bus, region: str, module: AgentModule, file: EvalFile) -> None:
    """The module's agents into the region (where this identity may), then a check that the
    file's agents are there."""
    registry = AgentRegistry(await bus.kv(agents_bucket(region)))
    definitions = [a.definition(module.source) for a in module.agents.values()]
    if bus.may_provision:
        await registry.publish(definitions)
    for name in sorted(file.agents):
        if await registry.get(name) is None:
            raise UserError(f"agent {name!r} is not published in region {region} (run "
                            f"voxbus tools {file.module} as the operator)")


def _model(given: str | None, module: AgentModule, file: EvalFile) -> str:
    """``--model``, else ``LLM_MODEL_NAME``, else a model that calls tools when the agents
    have tools or handoffs; "" : the stage's own default."""
    if given:
        return given
    if env := os.environ.get("LLM_MODEL_NAME", ""):
        return env
    agents = [module.agents[name] for name in file.agents]
    return TOOLS_MODEL if any(a.tools or a.handoffs for a in agents) else ""


def _check_model(env: dict[str, str]) -> str:
    """The model the LLM stage will run, checked now (a missing model: one line)."""
    from voxbus.services.llm.models import resolve_model
    from voxbus.services.llm.settings import LlmSettings

    settings = LlmSettings.from_env(env)
    if settings.backend == "llama":
        resolve_model(settings)
        return settings.model_name
    return f"{settings.backend}:{settings.model}"


#: Variables of the caller's environment that would point the started stages elsewhere.
_NOT_PASSED = ("NATS_URL", "NATS_USER", "NATS_PASSWORD", "VOXBUS_CREDENTIALS", "VOXBUS_REGIONS",
               "VOXBUS_REGION")


class LocalStack:
    """An embedded nats-server, the LLM stage and the module's tool worker, as processes."""

    region = "local"

    def __init__(self, file: EvalFile, spec: str, model: str, *,
                 logs: Path | None = None) -> None:
        self.file = file
        self.spec = spec
        self.model = model
        self.logs = logs
        self.bus: Bus | None = None
        self.run = Run(nats="", region=self.region, model=model)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._server: Any = None
        self._children: list[Any] = []

    def _env(self, run_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
        """(the LLM stage's environment, the tool worker's)."""
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(_NOT_PASSED)}
        base.update(NATS_URL=self._server.url, VOXBUS_REGION=self.region,
                    VOXBUS_LOG_LEVEL="info", VOXBUS_LOG_FORMAT="json",
                    VOXBUS_LEASE_TTL_S=f"{LOCAL_LEASE_TTL_S:g}")
        if self.logs is not None:
            base["VOXBUS_LOG_PII"] = "1"  # the scripted lines and the replies, to read
        llm = dict(base)
        if self.model:
            llm["LLM_MODEL_NAME"] = self.model
        llm.setdefault("LLM_TEMPERATURE", "0")
        llm.setdefault("LLM_ENGINES", "1")  # one conversation at a time
        # A tool call's text is held until it is whole, so the wait for the "next token" spans
        # reading the prompt and writing the call: longer than a spoken reply's first token.
        llm.setdefault("LLM_TIMEOUT_S", "120")
        tools = dict(base)
        tools.update({k: v.replace("{run_dir}", str(run_dir)) for k, v in self.file.env.items()})
        return llm, tools

    async def __aenter__(self) -> LocalStack:
        from voxbus.dev.supervise import ChildProcess, LoopError
        from voxbus.ops.nats import EmbeddedNats

        self._tmp = tempfile.TemporaryDirectory(prefix="voxbus-eval-")
        run_dir = Path(self._tmp.name)
        try:
            self._server = await asyncio.to_thread(EmbeddedNats().start)
            self.run.nats = f"embedded ({self._server.url})"
            say(f"  [nats] ready at {self._server.url}")
            llm_env, tools_env = self._env(run_dir)
            self.run.model = _check_model(llm_env)
            self.bus = await Bus.connect(self._server.url, regions=[self.region],
                                         name="voxbus-eval")
            await self.bus.provision(Retention(leases_s=LOCAL_LEASE_TTL_S))
            if self.logs is not None:
                self.logs.mkdir(parents=True, exist_ok=True)
            llm = ChildProcess("llm", llm_env, echo=False, log_path=self._log("llm"))
            tools = ChildProcess("tools", tools_env, echo=False, args=[self.spec],
                                 log_path=self._log("tools"))
            self._children = [llm, tools]
            self.run.stages = [f"voxbus llm (LLM_MODEL_NAME={self.run.model})",
                               f"voxbus tools {self.spec}"]
            say(f"  [llm] starting {self.run.model}; [tools] starting {self.file.module}")
            for child in self._children:
                await child.start()
            try:
                await asyncio.gather(*(c.wait_ready(300.0) for c in self._children))
            except LoopError as exc:
                raise UserError(str(exc).replace("\n", "; ")) from None
            say(f"  [llm] ready after {llm.ready_s:.1f} s; [tools] ready after "
                f"{tools.ready_s:.1f} s")
        except BaseException:
            await self.aclose()
            raise
        return self

    def _log(self, name: str) -> Path | None:
        return self.logs / f"{name}.log" if self.logs is not None else None

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        children, self._children = self._children, []
        await asyncio.gather(*(c.stop() for c in children), return_exceptions=True)
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await self.bus.close()
            self.bus = None
        if self._server is not None:
            await asyncio.to_thread(self._server.stop)
            self._server = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


if __name__ == "__main__":
    from voxbus.cli import main as voxbus_main

    sys.exit(voxbus_main(["eval", *sys.argv[1:]]))
