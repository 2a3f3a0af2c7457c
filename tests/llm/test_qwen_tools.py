"""LlamaCppEngine on the real Qwen2.5-Coder-0.5B-Instruct GGUF (``LLM_MODEL_NAME=qwen-0.5b``,
joined by ./dev setup): it calls a tool, as a bare call object (it leaves out the Hermes tags
its prompt asks for; ``ToolCallExtractor(bare_json=True)``) (marked ``model``).

It calls tools too eagerly to be tried on questions no tool fits: it invents tools
(``bring_dog``) or hangs up on a greeting; qwen-1.5b does better."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from voxbus.errors import UserError
from voxbus.services.llm.engine import (
    ChatMessage,
    FinishDelta,
    LLMDelta,
    TextDelta,
    ToolCallDelta,
)
from voxbus.services.llm.llama_engine import LlamaCppEngine
from voxbus.services.llm.models import QWEN_0_5B, model_path
from voxbus.services.llm.tools import DEFAULT_TOOLS

pytestmark = pytest.mark.model
log = logging.getLogger(__name__)

SYSTEM: ChatMessage = {
    "role": "system",
    "content": "You are a friendly voice assistant on a phone call. Answer in one short sentence.",
}
ASK_TIME: ChatMessage = {"role": "user", "content": "What time is it in Tokyo right now?"}


@pytest.fixture(scope="module")
def qwen_path() -> Path:
    try:
        return model_path(QWEN_0_5B.name)
    except UserError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(str(exc))


@pytest.fixture
async def qwen(qwen_path: Path) -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(
        model_path=qwen_path, n_threads=1, n_threads_batch=2, temperature=0.0, max_tokens=64,
        default_system_prompt=QWEN_0_5B.default_system, tool_mode="hermes",
    )  # fmt: skip
    try:
        yield engine
    finally:
        await engine.aclose()


async def collect(engine: LlamaCppEngine, messages: list[ChatMessage]) -> list[LLMDelta]:
    return [d async for d in engine.stream(messages, tools=DEFAULT_TOOLS)]


async def test_qwen_calls_a_tool(qwen: LlamaCppEngine) -> None:
    deltas = await collect(qwen, [SYSTEM, ASK_TIME])
    log.info("deltas=%r stats=%s", deltas, qwen.last_stats)
    calls = [d for d in deltas if isinstance(d, ToolCallDelta)]
    assert [c.name for c in calls] == ["get_current_time"], deltas
    assert "Tokyo" in json.loads(calls[0].arguments).get("timezone", ""), calls
    assert not any(isinstance(d, TextDelta) for d in deltas)  # nothing of the call is spoken
    assert deltas[-1] == FinishDelta("tool_calls")

    # Should it write the tags, they reach the parser: Qwen has a token for each, kept as text.
    llm = qwen._llm
    assert llm is not None
    for tag in ("<tool_call>", "</tool_call>"):
        (token,) = llm.tokenize(tag.encode(), add_bos=False, special=True)
        assert qwen._piece(llm, token) == tag.encode()
