"""The scenario file of ``voxbus eval`` and the checks of one turn.

```yaml
module: agent.py                        # the agents' module (beside this file, or from here)
agent: frontdesk                        # who answers (a scenario may name another)
env:                                    # for the tool worker voxbus eval starts
  FRONTDESK_DB: "{run_dir}/frontdesk.sqlite3"   # {run_dir}: a fresh directory per run
scenarios:
  - name: book for four
    turns:
      - user: "Could I get a table for four this Friday at seven?"
        expect: {tools: [{name: check_availability, args: {people: 4}}]}
      - user: "Great, book it under Rossi."
        expect:
          tools: [{name: book_table, args: {name: Rossi, people: 4}}]
          reply_matches: "(?i)rossi|booked"
      - user: "Thanks, bye."
        expect: {tools: [end_call], handoff: null}
```

What a turn's ``expect`` may say (each key left out is not checked):
- ``tools``: these calls, in this order (others may come between); ``[]``: no call at all. An
  entry is a name or ``{name, args, ok}``: ``args`` is a subset of the call's arguments (strings
  equal ignoring case and surrounding spaces, numbers equal, "4" equal to 4), ``ok`` whether the
  tool succeeded;
- ``not_tools``: names that must not be called;
- ``handoff``: ``<agent>``: a ``transfer_to_<agent>`` call succeeded in this turn; ``null``: no
  handoff;
- ``reply_matches``: a regular expression found (``re.search``) in the spoken reply;
- ``end_call``: whether the reply ends the call.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from voxbus.contracts.agents import TRANSFER_PREFIX
from voxbus.errors import UserError

_FILE_KEYS = {"module", "agent", "scenarios", "env"}
_SCENARIO_KEYS = {"name", "agent", "turns"}
_TURN_KEYS = {"user", "expect"}
_EXPECT_KEYS = {"tools", "not_tools", "handoff", "reply_matches", "end_call"}
_TOOL_KEYS = {"name", "args", "ok"}


@dataclass(frozen=True)
class ExpectedCall:
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    ok: bool | None = None

    def describe(self) -> str:
        return call_text(self.name, self.args)


@dataclass(frozen=True)
class Expect:
    #: None: not checked; []: no call at all.
    tools: tuple[ExpectedCall, ...] | None = None
    not_tools: tuple[str, ...] = ()
    #: Whether ``handoff`` is checked (``handoff: null`` checks that there is none).
    check_handoff: bool = False
    handoff: str | None = None
    reply_matches: re.Pattern[str] | None = None
    end_call: bool | None = None


@dataclass(frozen=True)
class Turn:
    user: str
    expect: Expect


@dataclass(frozen=True)
class Scenario:
    name: str
    agent: str
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class EvalFile:
    path: Path
    #: The module as given, and the file it names (or a dotted module name as given).
    module: str
    agent: str
    scenarios: tuple[Scenario, ...]
    #: The tool worker's environment where ``voxbus eval`` starts it (``{run_dir}``: a fresh
    #: directory of the run, so a database starts empty each time).
    env: dict[str, str] = field(default_factory=dict)

    @property
    def turns(self) -> int:
        return sum(len(s.turns) for s in self.scenarios)

    @property
    def agents(self) -> set[str]:
        return {s.agent for s in self.scenarios}


# ---- reading ----------------------------------------------------------------------------------


def _bad(path: Path, where: str, what: str) -> UserError:
    return UserError(f"{path}: {where}: {what}" if where else f"{path}: {what}")


def _keys(path: Path, where: str, value: object, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(path, where, f"expected a mapping, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise _bad(path, where, f"unknown key {unknown[0]!r} (expected one of "
                                f"{', '.join(sorted(allowed))})")
    return {str(k): v for k, v in value.items()}


def _expected_call(path: Path, where: str, raw: object) -> ExpectedCall:
    if isinstance(raw, str) and raw.strip():
        return ExpectedCall(raw.strip())
    item = _keys(path, where, raw, _TOOL_KEYS)
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _bad(path, where, "a tool needs a name")
    args = item.get("args") or {}
    if not isinstance(args, dict):
        raise _bad(path, where, "args must be a mapping")
    ok = item.get("ok")
    if ok is not None and not isinstance(ok, bool):
        raise _bad(path, where, "ok must be true or false")
    return ExpectedCall(name.strip(), {str(k): v for k, v in args.items()}, ok)


def _expect(path: Path, where: str, raw: object) -> Expect:
    if raw is None:
        return Expect()
    e = _keys(path, where, raw, _EXPECT_KEYS)
    tools: tuple[ExpectedCall, ...] | None = None
    if "tools" in e:
        listed = e["tools"]
        if listed is None:
            listed = []
        if not isinstance(listed, list):
            raise _bad(path, f"{where}.tools", "expected a list ([] : no tool call)")
        tools = tuple(_expected_call(path, f"{where}.tools[{i}]", t)
                      for i, t in enumerate(listed))
    not_tools = e.get("not_tools") or []
    if not isinstance(not_tools, list) or not all(isinstance(n, str) for n in not_tools):
        raise _bad(path, f"{where}.not_tools", "expected a list of tool names")
    handoff = e.get("handoff")
    if handoff is not None and (not isinstance(handoff, str) or not handoff.strip()):
        raise _bad(path, f"{where}.handoff", "expected an agent's name or null")
    pattern = None
    if (regex := e.get("reply_matches")) is not None:
        if not isinstance(regex, str):
            raise _bad(path, f"{where}.reply_matches", "expected a regular expression")
        try:
            pattern = re.compile(regex)
        except re.error as exc:
            raise _bad(path, f"{where}.reply_matches", f"bad regular expression: {exc}"
                       ) from None
    end_call = e.get("end_call")
    if end_call is not None and not isinstance(end_call, bool):
        raise _bad(path, f"{where}.end_call", "expected true or false")
    return Expect(tools=tools, not_tools=tuple(not_tools), check_handoff="handoff" in e,
                  handoff=handoff.strip() if isinstance(handoff, str) else None,
                  reply_matches=pattern, end_call=end_call)


def parse(path: Path, text: str) -> EvalFile:
    """The scenario file ``text`` (read from ``path``); a ``UserError`` naming what is wrong."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}: not valid YAML{at}: {problem}") from None
    top = _keys(path, "", raw, _FILE_KEYS)
    module = top.get("module")
    if not isinstance(module, str) or not module.strip():
        raise _bad(path, "", "'module' is missing (the agents' .py file or module name)")
    agent = top.get("agent") or ""
    if not isinstance(agent, str):
        raise _bad(path, "agent", "expected an agent's name")
    env = top.get("env") or {}
    if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str | int | float) for k, v in env.items()):
        raise _bad(path, "env", "expected a mapping of variable names to strings")
    listed = top.get("scenarios")
    if not isinstance(listed, list) or not listed:
        raise _bad(path, "", "'scenarios' is missing or empty")
    scenarios: list[Scenario] = []
    names: set[str] = set()
    for i, raw_s in enumerate(listed):
        s = _keys(path, f"scenarios[{i}]", raw_s, _SCENARIO_KEYS)
        name = str(s.get("name") or f"scenario {i + 1}")
        if name in names:
            raise _bad(path, f"scenarios[{i}]", f"two scenarios are named {name!r}")
        names.add(name)
        s_agent = s.get("agent") or agent
        if not isinstance(s_agent, str) or not s_agent:
            raise _bad(path, f"scenario {name!r}", "no agent (set 'agent' at the top or here)")
        raw_turns = s.get("turns")
        if not isinstance(raw_turns, list) or not raw_turns:
            raise _bad(path, f"scenario {name!r}", "'turns' is missing or empty")
        turns: list[Turn] = []
        for j, raw_t in enumerate(raw_turns):
            where = f"scenario {name!r} turn {j + 1}"
            t = _keys(path, where, raw_t, _TURN_KEYS)
            user = t.get("user")
            if not isinstance(user, str | int | float) or not str(user).strip():
                raise _bad(path, where, "'user' is missing (what the caller says)")
            turns.append(Turn(str(user).strip(), _expect(path, f"{where} expect",
                                                          t.get("expect"))))
        scenarios.append(Scenario(name, s_agent, tuple(turns)))
    return EvalFile(path=path, module=module.strip(), agent=agent, scenarios=tuple(scenarios),
                    env={k: str(v) for k, v in env.items()})


def read(path: str | Path) -> EvalFile:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: cannot be read: {exc}") from None
    return parse(p, text)


def module_spec(file: EvalFile) -> str:
    """The module to load: a path relative to the scenario file when it is there, else as given
    (from the working directory); a dotted name as given."""
    spec = file.module
    if not (spec.endswith(".py") or "/" in spec):
        return spec
    given = Path(spec).expanduser()
    beside = file.path.parent / given
    if not given.is_absolute() and beside.is_file():
        return str(beside.resolve())
    return str(given.resolve()) if given.is_file() else spec


# ---- checking ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """A tool call a reply made (``ReplyEnd.tools``)."""

    name: str
    arguments: str
    ok: bool

    @property
    def args(self) -> dict[str, Any]:
        try:
            value = json.loads(self.arguments) if self.arguments.strip() else {}
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def describe(self) -> str:
        return call_text(self.name, self.args, self.ok)


def call_text(name: str, args: dict[str, Any], ok: bool = True) -> str:
    inner = ", ".join(f"{k}={v}" for k, v in args.items())
    return f"{name}({inner})" + ("" if ok else "!")


def handoff_of(calls: list[Call]) -> str | None:
    """The agent a turn handed the session to (its last successful ``transfer_to_*``)."""
    done = [c.name.removeprefix(TRANSFER_PREFIX) for c in calls
            if c.name.startswith(TRANSFER_PREFIX) and c.ok]
    return done[-1] if done else None


def same_value(expected: object, actual: object) -> bool:
    """Strings ignoring case and surrounding spaces; numbers by value (a numeric string too)."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    if isinstance(expected, int | float):
        if isinstance(actual, str):
            try:
                actual = float(actual.strip())
            except ValueError:
                return False
        return isinstance(actual, int | float) and math.isclose(expected, actual)
    if isinstance(expected, str):
        return isinstance(actual, str | int | float) and (
            str(actual).strip().casefold() == expected.strip().casefold())
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and same_value(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(
            same_value(e, a) for e, a in zip(expected, actual, strict=True))
    return expected == actual


def matches(expected: ExpectedCall, call: Call) -> bool:
    if call.name != expected.name:
        return False
    if expected.ok is not None and call.ok != expected.ok:
        return False
    args = call.args
    return all(k in args and same_value(v, args[k]) for k, v in expected.args.items())


def check(expect: Expect, calls: list[Call], reply: str, end_call: bool) -> list[str]:
    """Why a turn fails its ``expect`` (empty: it passes)."""
    reasons: list[str] = []
    called = ", ".join(c.describe() for c in calls) or "none"
    if expect.tools is not None:
        if not expect.tools and calls:
            reasons.append(f"expected no tool call, called {called}")
        at = 0
        for want in expect.tools:
            found = next((i for i in range(at, len(calls)) if matches(want, calls[i])), None)
            if found is None:
                same_name = [c for c in calls if c.name == want.name]
                how = (f"called {', '.join(c.describe() for c in same_name)}" if same_name
                       else f"called {called}")
                reasons.append(f"expected {want.describe()}"
                               + ("" if want.ok is None else f" ok={want.ok}") + f", {how}")
            else:
                at = found + 1
    for name in expect.not_tools:
        if any(c.name == name for c in calls):
            reasons.append(f"{name} must not be called, called {called}")
    if expect.check_handoff:
        got = handoff_of(calls)
        if got != expect.handoff:
            wanted = f"a handoff to {expect.handoff}" if expect.handoff else "no handoff"
            reasons.append(f"expected {wanted}, got " + (f"one to {got}" if got else "none"))
    if expect.reply_matches is not None and not expect.reply_matches.search(reply):
        reasons.append(f"reply does not match /{expect.reply_matches.pattern}/")
    if expect.end_call is not None and end_call != expect.end_call:
        reasons.append("expected the call to end" if expect.end_call
                       else "the reply ended the call")
    return reasons
