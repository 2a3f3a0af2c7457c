from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from voxbus.services.llm.engine import ToolCallDelta
from voxbus.services.llm.tools import DEFAULT_TOOLS, END_CALL, GET_CURRENT_TIME, ToolExecutor

pytestmark = pytest.mark.fast

NOW = datetime(2026, 11, 24, 13, 5, 0, tzinfo=UTC)


@pytest.fixture
def executor() -> ToolExecutor:
    return ToolExecutor(now=lambda: NOW)


def test_declarations_are_openai_tools() -> None:
    assert [t["function"]["name"] for t in DEFAULT_TOOLS] == ["end_call", "get_current_time"]
    for tool in (END_CALL, GET_CURRENT_TIME):
        assert tool["type"] == "function"
        assert tool["function"]["parameters"]["type"] == "object"
        json.dumps(tool)  # serializable as is
    props = GET_CURRENT_TIME["function"]["parameters"]["properties"]
    assert props["timezone"]["type"] == "string"


def test_current_time_defaults_to_utc(executor: ToolExecutor) -> None:
    result = executor.execute("get_current_time", "{}")
    assert result.ok and not result.end_call
    data = json.loads(result.content)
    assert data["timezone"] == "UTC"
    assert data["time"] == "13:05"
    assert data["iso"] == "2026-11-24T13:05:00+00:00"
    assert executor.execute("get_current_time", "").ok  # empty arguments mean {}


@pytest.mark.parametrize(
    ("zone", "time", "key"),
    [("Europe/Paris", "14:05", "Europe/Paris"), ("Asia/Tokyo", "22:05", "Asia/Tokyo"),
     ("europe/paris", "14:05", "Europe/Paris")],
)  # fmt: skip
def test_current_time_in_a_zone(executor: ToolExecutor, zone: str, time: str, key: str) -> None:
    result = executor.execute("get_current_time", json.dumps({"timezone": zone}))
    assert result.ok
    data = json.loads(result.content)
    assert (data["time"], data["timezone"]) == (time, key)


@pytest.mark.parametrize(
    ("name", "arguments", "fragment"),
    [
        ("get_current_time", '{"timezone": "Mars/Olympus"}', "unknown time zone"),
        ("get_current_time", '{"timezone": "Europe"}', "unknown time zone"),
        ("get_current_time", '{"timezone": "../../etc/passwd"}', "unknown time zone"),
        ("get_current_time", '{"timezone": "' + "x" * 400 + '"}', "unknown time zone"),
        ("get_current_time", '{"timezone": 5}', "must be a string"),
        ("get_current_time", "{not json", "not valid JSON"),
        ("get_current_time", "[1, 2]", "JSON object"),
        ("get_current_time", "null", "JSON object"),
        ("end_call", '{"reason": 3}', "must be a string"),
        ("launch_rockets", "{}", "unknown tool"),
    ],
)
def test_bad_calls_return_error_strings(
    executor: ToolExecutor, name: str, arguments: str, fragment: str
) -> None:
    result = executor.execute(name, arguments)
    assert not result.ok
    assert fragment in json.loads(result.content)["error"]


def test_a_failing_tool_never_raises() -> None:
    def broken_clock() -> datetime:
        raise RuntimeError("clock broke")

    result = ToolExecutor(now=broken_clock).execute("get_current_time", "{}")
    assert not result.ok
    assert "RuntimeError" in json.loads(result.content)["error"]


def test_end_call(executor: ToolExecutor) -> None:
    result = executor.execute("end_call", '{"reason": "user said goodbye"}')
    assert result.ok and result.end_call
    assert executor.execute("end_call", "{}").end_call


def test_run_builds_the_tool_message(executor: ToolExecutor) -> None:
    call = ToolCallDelta(id="call_7", name="get_current_time", arguments='{"timezone": "UTC"}')
    result, message = executor.run(call)
    assert message == {"role": "tool", "content": result.content, "tool_call_id": "call_7"}
