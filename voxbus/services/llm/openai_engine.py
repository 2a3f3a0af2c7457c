"""Engine for any OpenAI-compatible server (vLLM, SGLang, llama.cpp's servers, hosted APIs).

POSTs ``{base_url}/v1/chat/completions`` with ``stream: true`` and parses the SSE stream: text
deltas pass straight through; streamed ``tool_calls`` fragments are accumulated by ``index`` and
emitted as whole ``ToolCallDelta``s when the choice finishes. Leaving the stream (cancellation,
``aclose``) closes the HTTP response, which aborts the request on the server.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, cast, get_args

import httpx

from voxbus.services.llm.engine import (
    ChatMessage,
    FinishDelta,
    FinishReason,
    LLMBackendError,
    LLMDelta,
    Sampling,
    TextDelta,
    ToolCallDelta,
    ToolSpec,
)
from voxbus.services.llm.toolcall_parser import new_call_id

_FINISH_REASONS: frozenset[str] = frozenset(get_args(FinishReason))

ToolResultRole: TypeAlias = Literal["tool", "user"]


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class SSEChatParser:
    """Turns the ``data:`` payloads of a chat-completions stream into deltas (pure, no I/O)."""

    def __init__(self) -> None:
        self._calls: dict[int, _PartialCall] = {}
        self.finish: FinishReason | None = None
        self.done = False

    def feed_line(self, line: str) -> list[LLMDelta]:
        """One SSE line; returns text and, when the choice finishes, the accumulated tool calls."""
        if not line.startswith("data:"):
            return []  # blank separators, comments (": ping"), event:/id: fields
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return self._flush_calls()
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            raise LLMBackendError(f"bad SSE payload: {data[:200]!r}") from exc
        if not isinstance(chunk, dict):
            raise LLMBackendError(f"bad SSE payload: {data[:200]!r}")
        if "error" in chunk:
            raise LLMBackendError(f"backend error: {chunk['error']!r}")
        out: list[LLMDelta] = []
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str) and content:
                out.append(TextDelta(content))
            for fragment in delta.get("tool_calls") or []:
                self._accumulate(fragment)
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self.finish = cast(FinishReason, reason) if reason in _FINISH_REASONS else "stop"
                out.extend(self._flush_calls())
        return out

    def _accumulate(self, fragment: Mapping[str, Any]) -> None:
        index = fragment.get("index", 0)
        call = self._calls.setdefault(index if isinstance(index, int) else 0, _PartialCall())
        if isinstance(fragment.get("id"), str) and fragment["id"]:
            call.id = fragment["id"]
        function = fragment.get("function") or {}
        if isinstance(function.get("name"), str) and function["name"]:
            call.name = function["name"]
        if isinstance(function.get("arguments"), str):
            call.arguments.append(function["arguments"])

    def _flush_calls(self) -> list[LLMDelta]:
        calls, self._calls = self._calls, {}
        out: list[LLMDelta] = []
        for _, call in sorted(calls.items()):
            if call.name:
                arguments = "".join(call.arguments) or "{}"
                out.append(
                    ToolCallDelta(id=call.id or new_call_id(), name=call.name, arguments=arguments)
                )
        if out and self.finish in (None, "stop"):
            self.finish = "tool_calls"
        return out


class OpenAICompatEngine:
    """Streaming chat over HTTP. ``base_url`` is the server root (``/v1`` is appended)."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str = "default",
        api_key: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.6,
        tool_choice: str | Mapping[str, Any] | None = "auto",
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        extra_body: Mapping[str, Any] | None = None,
        tool_result_role: ToolResultRole = "tool",
        tool_result_template: str = "The {name} tool returned: {content}",
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._url = base_url.rstrip("/").removesuffix("/v1") + "/v1/chat/completions"
        self._model = model
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._tool_choice = tool_choice
        self._extra_body = dict(extra_body or {})
        self._tool_result_role = tool_result_role
        self._tool_result_template = tool_result_template
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._headers = headers

    def _body(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] | None,
        max_tokens: int,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model,
            "messages": self._wire_messages(messages),
            "stream": True,
            "max_tokens": max_tokens,
            "temperature": self._temperature,
        }
        if tools:
            body["tools"] = list(tools)
            if self._tool_choice is not None:
                body["tool_choice"] = self._tool_choice
        body.update(self._extra_body)
        return body

    def _wire_messages(self, messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
        """Messages as sent: assistant ``content: null`` becomes ``""`` (llama_cpp.server rejects
        null); with ``tool_result_role="user"`` tool results become user turns, for servers whose
        chat template drops ``tool`` messages (llama_cpp.server's chatml-function-calling)."""
        names: dict[str, str] = {}
        wire: list[dict[str, Any]] = []
        for message in messages:
            out: dict[str, Any] = dict(message)
            if message["role"] == "assistant":
                if out.get("content") is None:
                    out["content"] = ""
                for call in message.get("tool_calls", []):
                    names[call["id"]] = call["function"]["name"]
            elif message["role"] == "tool" and self._tool_result_role == "user":
                name = names.get(message.get("tool_call_id", ""), "tool")
                text = self._tool_result_template.format(name=name, content=message["content"])
                out = {"role": "user", "content": text}
            wire.append(out)
        return wire

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] | None = None,
        sampling: Sampling | None = None,
    ) -> AsyncGenerator[LLMDelta, None]:
        s = sampling or Sampling()
        body = self._body(messages, tools, self._max_tokens if s.max_tokens is None
                          else s.max_tokens)
        if s.temperature is not None:
            body["temperature"] = s.temperature
        async for delta in self._request(body):
            yield delta

    async def _request(self, body: dict[str, Any]) -> AsyncGenerator[LLMDelta, None]:
        parser = SSEChatParser()
        try:
            async with self._client.stream(
                "POST", self._url, json=body, headers=self._headers
            ) as response:
                if response.status_code != httpx.codes.OK:
                    detail = (await response.aread())[:500].decode(errors="replace")
                    raise LLMBackendError(f"HTTP {response.status_code} from {self._url}: {detail}")
                async for line in response.aiter_lines():
                    for delta in parser.feed_line(line):
                        yield delta
                    if parser.done:
                        break
        except httpx.TimeoutException as exc:
            raise LLMBackendError(f"timed out talking to {self._url}: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise LLMBackendError(f"HTTP failure talking to {self._url}: {exc!r}") from exc
        for delta in parser.feed_line("data: [DONE]") if not parser.done else []:
            yield delta
        yield FinishDelta(parser.finish or "stop")

    async def warmup(self, messages: Sequence[ChatMessage] = ()) -> None:
        """One 1-token request, so the server loads the model and caches the prompt prefix."""
        prompt = list(messages)
        if not prompt or prompt[-1]["role"] == "system":
            prompt.append({"role": "user", "content": "Hi"})
        async for _ in self._request(self._body(prompt, None, 1)):
            pass

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
