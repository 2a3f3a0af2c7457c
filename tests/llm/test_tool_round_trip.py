"""The tool round trip: the model asks for get_current_time, the executor runs it, the result goes
back as a ``tool`` message and the model answers.

SmolLM2-135M cannot decide to call tools by itself (see the module notes in the report), so the
full round trip is proven on a scripted OpenAI-compatible server, and the real model is driven
through llama_cpp.server with a forced ``tool_choice`` (grammar-constrained arguments).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.llm.scripted_openai_server import ScriptedOpenAIServer, Step, text_chunk, tool_chunk
from voxbus.services.llm.engine import (
    ChatMessage,
    FinishDelta,
    LLMEngine,
    TextDelta,
    ToolCallDelta,
    ToolSpec,
    assistant_message,
)
from voxbus.services.llm.fake import FakeLLM, FakeTurn
from voxbus.services.llm.llama_engine import LlamaCppEngine
from voxbus.services.llm.openai_engine import OpenAICompatEngine
from voxbus.services.llm.tools import DEFAULT_TOOLS, GET_CURRENT_TIME, ToolExecutor, ToolResult

log = logging.getLogger(__name__)
NOW = datetime(2026, 11, 24, 13, 5, tzinfo=UTC)
SYSTEM: ChatMessage = {"role": "system", "content": "You are a voice assistant. Be brief."}
ASK_TIME: ChatMessage = {"role": "user", "content": "What time is it in Tokyo?"}


async def agent_turn(
    engine: LLMEngine,
    messages: list[ChatMessage],
    executor: ToolExecutor,
    tools: Sequence[ToolSpec],
    max_rounds: int = 3,
) -> tuple[str, list[ToolResult]]:
    """What the LLM stage does with one user turn: stream, run tools, stream again."""
    results: list[ToolResult] = []
    for _ in range(max_rounds):
        text: list[str] = []
        calls: list[ToolCallDelta] = []
        async for delta in engine.stream(messages, tools=tools):
            if isinstance(delta, TextDelta):
                text.append(delta.text)
            elif isinstance(delta, ToolCallDelta):
                calls.append(delta)
        messages.append(assistant_message("".join(text), calls))
        if not calls:
            return "".join(text), results
        for call in calls:
            result, message = executor.run(call)
            results.append(result)
            messages.append(message)
    raise AssertionError("the model kept calling tools")


def scripted_model(body: dict[str, Any]) -> Sequence[Step]:
    """Calls get_current_time, then answers from the tool message it is given."""
    last = body["messages"][-1]
    if last["role"] != "tool":
        return [
            (0.0, tool_chunk(0, call_id="call_1", name="get_current_time")),
            (0.0, tool_chunk(0, arguments='{"timezone"')),
            (0.0, tool_chunk(0, arguments=': "Asia/Tokyo"}')),
            (0.0, text_chunk(finish="tool_calls")),
            (0.0, "[DONE]"),
        ]
    time = json.loads(last["content"])["time"]
    words = ["It", " is", f" {time}", " in", " Tokyo."]
    return [*((0.0, text_chunk(w)) for w in words), (0.0, text_chunk(finish="stop"))]


@pytest.mark.fast
async def test_round_trip_through_an_openai_compatible_server() -> None:
    executor = ToolExecutor(now=lambda: NOW)
    async with ScriptedOpenAIServer(scripted_model) as server:
        engine = OpenAICompatEngine(base_url=server.base_url)
        messages = [SYSTEM, ASK_TIME]
        answer, results = await agent_turn(engine, messages, executor, DEFAULT_TOOLS)
        await engine.aclose()
    assert answer == "It is 22:05 in Tokyo."
    assert [r.ok for r in results] == [True]
    second = server.requests[1]["messages"]
    assert second[2]["role"] == "assistant"
    assert second[2]["tool_calls"][0]["function"] == {
        "name": "get_current_time",
        "arguments": '{"timezone": "Asia/Tokyo"}',
    }
    assert second[3]["role"] == "tool" and second[3]["tool_call_id"] == "call_1"
    assert json.loads(second[3]["content"])["timezone"] == "Asia/Tokyo"


@pytest.mark.fast
async def test_round_trip_with_the_fake_llm() -> None:
    call = ToolCallDelta(id="c1", name="end_call", arguments='{"reason": "bye"}')
    fake = FakeLLM([FakeTurn(tool_calls=[call]), FakeTurn.words("Goodbye!")])
    executor = ToolExecutor(now=lambda: NOW)
    messages: list[ChatMessage] = [SYSTEM, {"role": "user", "content": "Bye."}]
    answer, results = await agent_turn(fake, messages, executor, DEFAULT_TOOLS)
    assert answer == "Goodbye!"
    assert results[0].end_call
    assert fake.calls[1][0][-1] == {
        "role": "tool",
        "content": results[0].content,
        "tool_call_id": "c1",
    }


@pytest.mark.model
async def test_smollm2_tool_call_through_llama_cpp_server(llama_server: str) -> None:
    """Real model: tool call (forced choice), executor, result back, spoken answer."""
    caller = OpenAICompatEngine(
        base_url=llama_server,
        temperature=0.0,
        tool_choice={"type": "function", "function": {"name": "get_current_time"}},
    )
    # llama_cpp.server's chatml-function-calling template drops role=tool messages, so the
    # result goes back as a user turn for this server.
    answerer = OpenAICompatEngine(
        base_url=llama_server,
        temperature=0.0,
        max_tokens=40,
        tool_result_role="user",
        tool_result_template="The current time is {content}. Tell me the time.",
    )
    executor = ToolExecutor(now=lambda: NOW)
    try:
        messages = [SYSTEM, ASK_TIME]
        deltas = [d async for d in caller.stream(messages, tools=[GET_CURRENT_TIME])]
        calls = [d for d in deltas if isinstance(d, ToolCallDelta)]
        assert deltas[-1] == FinishDelta("tool_calls")
        assert [c.name for c in calls] == ["get_current_time"]
        assert isinstance(json.loads(calls[0].arguments), dict)  # grammar-constrained JSON
        result, tool_message = executor.run(calls[0])
        log.info("model arguments=%s -> %s", calls[0].arguments, result.content)
        messages += [assistant_message("", calls), tool_message]
        answer = "".join(
            [d.text async for d in answerer.stream(messages) if isinstance(d, TextDelta)]
        )
        log.info("model answer after the tool result: %r", answer)
        assert answer.strip()
    finally:
        await caller.aclose()
        await answerer.aclose()


@pytest.mark.model
async def test_in_process_hermes_mode_offers_tools_but_smollm2_does_not_call(
    smollm2_path: Path,
) -> None:
    """tool_mode="hermes" puts the tools in the prompt and parses <tool_call> blocks; SmolLM2-135M
    answers in text instead of calling (a bigger GGUF is needed for in-process tool use)."""
    engine = LlamaCppEngine(
        model_path=smollm2_path, n_threads=1, temperature=0.0, max_tokens=40, tool_mode="hermes"
    )
    try:
        deltas = [d async for d in engine.stream([SYSTEM, ASK_TIME], tools=DEFAULT_TOOLS)]
        stats = engine.last_stats
        assert stats is not None and stats.prompt_tokens > 200  # the tool block is in the prompt
        assert isinstance(deltas[-1], FinishDelta)
        called = [d.name for d in deltas if isinstance(d, ToolCallDelta)]
        log.info(
            "hermes mode: calls=%s text=%r",
            called,
            "".join(d.text for d in deltas if isinstance(d, TextDelta)),
        )
    finally:
        await engine.aclose()
