"""The agent SDK: schemas from type hints and docstrings, argument checks, errors the model can
read, agents' own checks, and a tools module that cannot load said in one line."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated

import pytest

from tests.test_cli_errors import CLOSED, assert_one_line, voxbus
from voxbus.agents import Agent, SchemaError, ToolContext, ToolError, tool
from voxbus.agents.loader import load
from voxbus.errors import UserError

pytestmark = pytest.mark.fast
HERE = Path(__file__).parent


class Seating(enum.Enum):
    INSIDE = "inside"
    TERRACE = "terrace"


@tool(read_only=True, filler="Let me look.", timeout_s=3.0)
async def find_table(
    day: str, people: int, seating: Seating = Seating.INSIDE,
    time: Annotated[str, "Like 19:00"] = "19:00", notes: list[str] | None = None,
    ctx: ToolContext | None = None,
) -> dict[str, object]:
    """Find a free table.

    Looks through the bookings.

    Args:
        day: The day, like "Friday".
        people: How many people
            are coming.
        seating: Where to sit.
    """
    if people > 20:
        raise ToolError("we have no table that large")
    return {"day": day, "people": people, "seating": seating, "key": ctx.key if ctx else ""}


def ctx() -> ToolContext:
    return ToolContext(session="s1", call_id="t1-s0-r1-c0", agent="desk")


def test_the_schema_comes_from_the_hints_and_the_docstring() -> None:
    decl = find_table.decl
    assert decl.description == "Find a free table."
    assert decl.read_only and decl.filler == "Let me look." and decl.timeout_s == 3.0
    props = decl.parameters["properties"]
    assert decl.parameters["required"] == ["day", "people"]
    assert props["day"] == {"type": "string", "description": 'The day, like "Friday".'}
    assert props["people"] == {"type": "integer", "description": "How many people are coming."}
    assert props["seating"]["enum"] == ["inside", "terrace"]
    assert props["time"] == {"type": "string", "description": "Like 19:00", "default": "19:00"}
    assert props["notes"] == {"type": "array", "items": {"type": "string"}}
    assert "ctx" not in props


async def test_a_call_checks_and_coerces_the_models_arguments() -> None:
    out = await find_table.run('{"day": "Friday", "people": "4", "table": 7}', ctx())
    assert out.ok and json.loads(out.result)["people"] == 4  # "table" is no argument: dropped
    assert json.loads(out.result)["key"] == "s1/t1-s0-r1-c0"
    for bad, says in [('{"day": "Friday"}', "missing argument 'people'"),
                      ('{"day": "Fri", "people": "many"}', "'people' must be integer"),
                      ('{"day": "Fri", "people": 2, "seating": "roof"}', "must be one of"),
                      ("[1]", "must be a JSON object"), ("{oops", "not valid JSON")]:
        out = await find_table.run(bad, ctx())
        assert not out.ok and says in json.loads(out.result)["error"], (bad, out.result)


async def test_errors_reach_the_model_in_words_and_bugs_do_not_leak() -> None:
    out = await find_table.run('{"day": "Friday", "people": 30}', ctx())
    assert not out.ok and json.loads(out.result) == {"error": "we have no table that large"}

    @tool
    def broken(x: int) -> int:
        """Breaks."""
        raise KeyError("secret detail")

    out = await broken.run('{"x": 1}', ctx())
    assert json.loads(out.result) == {"error": "broken failed"}


def test_signatures_a_model_cannot_fill_are_refused() -> None:
    with pytest.raises(SchemaError, match="needs a type hint"):
        tool(name="untyped")(lambda x: x)
    with pytest.raises(SchemaError, match="needs a docstring"):
        @tool
        def quiet(x: int) -> int:
            return x
    with pytest.raises(SchemaError, match="cannot be offered"):
        @tool
        def odd(x: complex) -> int:
            """Odd."""
            return 0


def test_agents_check_their_names_tools_and_settings() -> None:
    a = Agent(name="desk", instructions="Take bookings.", tools=[find_table],
              handoffs=[Agent(name="events", instructions="Plan events.")])
    d = a.definition("m.py")
    assert d.handoffs == ["events"] and d.tools[0].name == "find_table" and d.version
    assert Agent(name="desk", instructions="Take bookings.", tools=[find_table]).definition(
        "m.py").version != d.version  # the content changed: a new version
    for kwargs, says in [({"name": "Desk"}, "lowercase"), ({"instructions": " "}, "instructions"),
                         ({"tools": [find_table, find_table]}, "twice"),
                         ({"temperature": 3.0}, "temperature")]:
        with pytest.raises(SchemaError, match=says):
            Agent(**{"name": "desk", "instructions": "x", **kwargs})  # type: ignore[arg-type,dict-item]

    @tool(name="end_call")
    def mine() -> str:
        """Mine."""
        return ""

    with pytest.raises(SchemaError, match="reserved"):
        Agent(name="desk", instructions="x", tools=[mine])


def test_loading_a_module_finds_its_agents_and_tools() -> None:
    module = load(str(HERE / "booking_tools.py"))
    assert set(module.agents) == {"desk", "events"}
    assert set(module.tools) == {"book_table", "opening_hours"}
    with pytest.raises(UserError, match="failed to import: ModuleNotFoundError"):
        load(str(HERE / "broken_tools.py"))
    with pytest.raises(UserError, match="no such file"):
        load(str(HERE / "nowhere.py"))


@pytest.mark.parametrize(("module", "says"), [
    ("broken_tools.py", "failed to import: ModuleNotFoundError: No module named "
                        "'voxbus_no_such_module' (line 3)"),
    ("bad_signature.py", "parameter 'order' needs a type hint"),
    ("nowhere.py", "no such file"),
])
def test_voxbus_tools_with_a_module_that_cannot_load_is_one_line(module: str, says: str) -> None:
    run = voxbus("tools", str(HERE / module), env={"NATS_URL": CLOSED})
    assert_one_line(run, "tools", says)
