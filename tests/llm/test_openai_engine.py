"""OpenAICompatEngine against a scripted SSE server (fast) and a real llama_cpp.server (model)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import pytest

from tests.llm.scripted_openai_server import (
    ScriptedOpenAIServer,
    Step,
    text_chunk,
    tool_chunk,
)
from voxbus.services.llm.engine import (
    ChatMessage,
    FinishDelta,
    LLMBackendError,
    LLMDelta,
    TextDelta,
    ToolCallDelta,
    assistant_message,
)
from voxbus.services.llm.openai_engine import OpenAICompatEngine, SSEChatParser

log = logging.getLogger(__name__)

QUESTION: list[ChatMessage] = [
    {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]


def words(body: dict[str, Any], delay: float = 0.0) -> Sequence[Step]:
    steps: list[Step] = [(delay, text_chunk(w)) for w in ["Paris", " is", " the", " capital."]]
    return [*steps, (0.0, text_chunk(finish="stop")), (0.0, "[DONE]")]


def text_of(deltas: Sequence[LLMDelta]) -> str:
    return "".join(d.text for d in deltas if isinstance(d, TextDelta))


@pytest.mark.fast
async def test_streams_text_and_sends_an_openai_request() -> None:
    async with ScriptedOpenAIServer(words) as server:
        engine = OpenAICompatEngine(base_url=server.base_url + "/v1", model="m", max_tokens=7)
        deltas = [d async for d in engine.stream(QUESTION)]
        await engine.aclose()
    assert text_of(deltas) == "Paris is the capital."
    assert deltas[-1] == FinishDelta("stop")
    body = server.requests[0]
    assert body["stream"] is True and body["model"] == "m" and body["max_tokens"] == 7
    assert body["messages"] == QUESTION and "tools" not in body


@pytest.mark.fast
async def test_accumulates_streamed_tool_calls_by_index() -> None:
    def script(body: dict[str, Any]) -> Sequence[Step]:
        return [
            (0.0, text_chunk("Let me check. ")),
            (0.0, tool_chunk(0, call_id="call_a", name="get_current_time")),
            (0.0, tool_chunk(1, call_id="call_b", name="end_call", arguments="{")),
            (0.0, tool_chunk(0, arguments='{"timezone": ')),
            (0.0, tool_chunk(0, arguments='"Asia/Tokyo"}')),
            (0.0, tool_chunk(1, arguments="}")),
            (0.0, text_chunk(finish="tool_calls")),
            (0.0, "[DONE]"),
        ]

    async with ScriptedOpenAIServer(script) as server:
        engine = OpenAICompatEngine(base_url=server.base_url)
        from voxbus.services.llm.tools import DEFAULT_TOOLS

        deltas = [d async for d in engine.stream(QUESTION, tools=DEFAULT_TOOLS)]
        await engine.aclose()
    assert deltas == [
        TextDelta("Let me check. "),
        ToolCallDelta(id="call_a", name="get_current_time", arguments='{"timezone": "Asia/Tokyo"}'),
        ToolCallDelta(id="call_b", name="end_call", arguments="{}"),
        FinishDelta("tool_calls"),
    ]
    assert server.requests[0]["tool_choice"] == "auto"
    assert [t["function"]["name"] for t in server.requests[0]["tools"]] == [
        "end_call", "get_current_time",
    ]  # fmt: skip


@pytest.mark.fast
async def test_stream_without_done_or_finish_still_finishes() -> None:
    async with ScriptedOpenAIServer(lambda body: [(0.0, text_chunk("Hi"))]) as server:
        engine = OpenAICompatEngine(base_url=server.base_url)
        deltas = [d async for d in engine.stream(QUESTION)]
        await engine.aclose()
    assert deltas == [TextDelta("Hi"), FinishDelta("stop")]


@pytest.mark.fast
async def test_http_error_is_a_backend_error() -> None:
    async with ScriptedOpenAIServer(words, status=503) as server:
        engine = OpenAICompatEngine(base_url=server.base_url)
        with pytest.raises(LLMBackendError, match="HTTP 503.*scripted failure"):
            async for _ in engine.stream(QUESTION):
                pass
        await engine.aclose()


@pytest.mark.fast
async def test_timeout_is_a_clear_backend_error() -> None:
    async with ScriptedOpenAIServer(lambda body: words(body, delay=1.0)) as server:
        engine = OpenAICompatEngine(base_url=server.base_url, read_timeout_s=0.2)
        started = time.perf_counter()
        with pytest.raises(LLMBackendError, match="timed out"):
            async for _ in engine.stream(QUESTION):
                pass
        assert time.perf_counter() - started < 1.0
        await engine.aclose()


@pytest.mark.fast
async def test_connection_refused_is_a_backend_error() -> None:
    async with ScriptedOpenAIServer(words) as server:
        url = server.base_url
    engine = OpenAICompatEngine(base_url=url, connect_timeout_s=0.5)
    with pytest.raises(LLMBackendError, match="HTTP failure"):
        async for _ in engine.stream(QUESTION):
            pass
    await engine.aclose()


@pytest.mark.fast
async def test_cancellation_closes_the_http_stream_promptly() -> None:
    def endless(body: dict[str, Any]) -> Sequence[Step]:
        return [(0.02, text_chunk(f" w{i}")) for i in range(500)]

    async with ScriptedOpenAIServer(endless) as server:
        engine = OpenAICompatEngine(base_url=server.base_url)
        got: list[LLMDelta] = []
        three = asyncio.Event()

        async def consume() -> None:
            async for delta in engine.stream(QUESTION):
                got.append(delta)
                if len(got) == 3:
                    three.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(three.wait(), timeout=5)
        cancelled_at = time.perf_counter()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        stop_s = time.perf_counter() - cancelled_at
        for _ in range(100):  # the server notices the closed connection on its next write
            if server.abandoned:
                break
            await asyncio.sleep(0.01)
        assert stop_s < 0.5  # at once (ms when idle; loose for a loaded machine)
        assert server.abandoned == 1
        # the engine is reusable at once
        server.script = words
        assert text_of([d async for d in engine.stream(QUESTION)]) == "Paris is the capital."
        await engine.aclose()


@pytest.mark.fast
def test_wire_messages_for_llama_cpp_server() -> None:
    call = ToolCallDelta(id="c1", name="get_current_time", arguments="{}")
    messages: list[ChatMessage] = [
        *QUESTION,
        assistant_message("", [call]),
        {"role": "tool", "content": '{"time": "13:05"}', "tool_call_id": "c1"},
    ]
    as_tool = OpenAICompatEngine(base_url="http://x")._wire_messages(messages)
    assert as_tool[2]["content"] == "" and as_tool[2]["tool_calls"][0]["id"] == "c1"
    assert as_tool[3]["role"] == "tool"
    as_user = OpenAICompatEngine(base_url="http://x", tool_result_role="user")._wire_messages(
        messages
    )
    assert as_user[3] == {
        "role": "user",
        "content": 'The get_current_time tool returned: {"time": "13:05"}',
    }


@pytest.mark.fast
def test_sse_parser_edge_cases() -> None:
    parser = SSEChatParser()
    assert parser.feed_line(": keep-alive") == []
    assert parser.feed_line("") == []
    role_only = 'data: {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}'
    assert parser.feed_line(role_only) == []
    with pytest.raises(LLMBackendError, match="bad SSE payload"):
        parser.feed_line("data: {not json")
    with pytest.raises(LLMBackendError, match="backend error"):
        parser.feed_line('data: {"error": {"message": "boom"}}')
    finish = 'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}'
    assert parser.feed_line(finish) == []
    assert parser.finish == "length"
    parser.feed_line("data: [DONE]")
    assert parser.done


# ---- a real llama_cpp.server ------------------------------------------------------------------


@pytest.mark.model
async def test_llama_cpp_server_streams_and_cancels(llama_server: str) -> None:
    engine = OpenAICompatEngine(base_url=llama_server, temperature=0.0, max_tokens=48)
    try:
        await engine.warmup(QUESTION[:1])
        started = time.perf_counter()
        arrivals: list[float] = []
        deltas: list[LLMDelta] = []
        async for delta in engine.stream(QUESTION):
            arrivals.append(time.perf_counter() - started)
            deltas.append(delta)
        text = text_of(deltas)
        log.info(
            "server ttft=%.0f ms total=%.0f ms text=%r", arrivals[0] * 1e3, arrivals[-1] * 1e3, text
        )
        assert text.strip()
        assert sum(isinstance(d, TextDelta) for d in deltas) >= 3
        assert arrivals[-1] > arrivals[0]
        assert isinstance(deltas[-1], FinishDelta)

        story: list[ChatMessage] = [{"role": "user", "content": "Tell me a long dragon story."}]
        got = 0
        cancel_s = 0.0
        async with contextlib.aclosing(engine.stream(story)) as stream:
            async for delta in stream:
                got += isinstance(delta, TextDelta)
                if got == 5:
                    cancelled_at = time.perf_counter()
                    break
        cancel_s = time.perf_counter() - cancelled_at
        assert cancel_s < 0.5  # at once (ms when idle; loose for a loaded machine)
        again = text_of([d async for d in engine.stream(QUESTION)])
        assert again.strip()
    finally:
        await engine.aclose()
