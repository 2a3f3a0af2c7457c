"""A tiny scripted OpenAI-compatible chat-completions server on loopback, for engine tests.

It speaks just enough HTTP/1.1: one request per connection, the SSE reply delimited by closing
the connection. ``script(body)`` decides the reply: a list of steps, each a delay followed by a
chunk dict (sent as ``data: {json}``), the string ``"[DONE]"`` or raw bytes. It records every
request body and how many replies the client abandoned (closed the connection early).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Step = tuple[float, "dict[str, Any] | str | bytes"]
Script = Callable[[dict[str, Any]], Sequence[Step]]


def text_chunk(text: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta: dict[str, Any] = {} if text is None else {"content": text}
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def tool_chunk(
    index: int, *, call_id: str | None = None, name: str | None = None, arguments: str = ""
) -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": arguments}
    if name is not None:
        function["name"] = name
    fragment: dict[str, Any] = {"index": index, "function": function}
    if call_id is not None:
        fragment["id"] = call_id
        fragment["type"] = "function"
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"tool_calls": [fragment]}, "finish_reason": None}],
    }


@dataclass
class ScriptedOpenAIServer:
    script: Script
    status: int = 200
    requests: list[dict[str, Any]] = field(default_factory=list)
    abandoned: int = 0
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def base_url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> ScriptedOpenAIServer:
        self._server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.abandoned += 1
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.decode("latin-1").split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-length":
                length = int(value.strip())
        body: dict[str, Any] = json.loads(await reader.readexactly(length)) if length else {}
        self.requests.append(body)
        if self.status != 200:
            payload = json.dumps({"error": {"message": "scripted failure"}}).encode()
            writer.write(
                f"HTTP/1.1 {self.status} Error\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        for delay, step in self.script(body):
            if delay:
                await asyncio.sleep(delay)
            if isinstance(step, bytes):
                data = step
            elif isinstance(step, str):
                data = f"data: {step}\n\n".encode()
            else:
                data = f"data: {json.dumps(step)}\n\n".encode()
            if reader.at_eof():
                raise ConnectionResetError("client went away")
            writer.write(data)
            await writer.drain()
