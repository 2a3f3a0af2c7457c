"""The LLM engine contract: chat messages in, a stream of typed deltas out.

Messages and tools use the OpenAI chat format (plain dicts), so the same history works with the
in-process llama.cpp engine, any OpenAI-compatible server and the scripted fake.

Cancellation: a consumer stops a stream by cancelling the task that iterates it, or by leaving the
``async for`` and closing the generator (``contextlib.aclosing``). Engines stop producing at once
and are ready for the next ``stream()`` call straight away.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, Protocol, TypeAlias, TypedDict

Role: TypeAlias = Literal["system", "user", "assistant", "tool"]
FinishReason: TypeAlias = Literal["stop", "length", "tool_calls", "content_filter", "error"]


class ToolCallFunction(TypedDict):
    name: str
    arguments: str  # a JSON object, as text


class ToolCall(TypedDict):
    """An assistant's tool call as it appears in an OpenAI ``assistant`` message."""

    id: str
    type: Literal["function"]
    function: ToolCallFunction


class ChatMessage(TypedDict):
    """One OpenAI-format chat message (``tool_calls`` on assistant, ``tool_call_id`` on tool)."""

    role: Role
    content: str | None
    tool_calls: NotRequired[list[ToolCall]]
    tool_call_id: NotRequired[str]
    name: NotRequired[str]


class FunctionSpec(TypedDict):
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object


class ToolSpec(TypedDict):
    """One tool in the OpenAI ``tools`` request format."""

    type: Literal["function"]
    function: FunctionSpec


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Next piece of the assistant's reply text (one or more tokens)."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A complete tool call: emitted once its arguments are fully known."""

    id: str
    name: str
    arguments: str  # JSON text, exactly as the model produced it

    def as_tool_call(self) -> ToolCall:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True, slots=True)
class FinishDelta:
    """The last delta of a stream that ran to its end (a cancelled stream has none)."""

    reason: FinishReason


LLMDelta: TypeAlias = TextDelta | ToolCallDelta | FinishDelta


@dataclass(frozen=True, slots=True)
class Sampling:
    """Per-reply overrides of the engine's sampling (an agent's); None: the engine's own."""

    temperature: float | None = None
    max_tokens: int | None = None


class LLMBackendError(RuntimeError):
    """The engine or its backend failed: timeout, HTTP error, bad stream, model error."""


class LLMEngine(Protocol):
    """Streaming chat generation. Implementations: LlamaCppEngine, OpenAICompatEngine, FakeLLM."""

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] | None = None,
        sampling: Sampling | None = None,
    ) -> AsyncGenerator[LLMDelta, None]:
        """Yield ``TextDelta``s and ``ToolCallDelta``s, then exactly one ``FinishDelta``.

        Raises ``LLMBackendError`` from the iteration when the backend fails.
        """
        ...

    async def warmup(self, messages: Sequence[ChatMessage] = ()) -> None:
        """Load what needs loading and pre-evaluate ``messages`` (e.g. the system prompt)."""
        ...

    async def aclose(self) -> None:
        """Stop any generation and release the backend."""
        ...


def assistant_message(text: str, tool_calls: Sequence[ToolCallDelta] = ()) -> ChatMessage:
    """The history entry for what the assistant said (and asked to call)."""
    message: ChatMessage = {"role": "assistant", "content": text or None}
    if tool_calls:
        message["tool_calls"] = [call.as_tool_call() for call in tool_calls]
    return message


def tool_result_message(call_id: str, content: str) -> ChatMessage:
    """The history entry carrying a tool's result back to the model."""
    return {"role": "tool", "content": content, "tool_call_id": call_id}
