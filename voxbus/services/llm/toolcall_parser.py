"""Streaming extraction of Hermes-style ``<tool_call>{...}</tool_call>`` blocks from model text.

Text outside the blocks passes through as soon as it cannot be the start of a ``<tool_call>`` tag;
each block becomes one ``ToolCallDelta`` (a JSON list inside one block gives several).
A malformed block is dropped (and counted), never spoken.

``bare_json=True`` also takes a reply that starts with a bare call object, ``{"name": ...,
"arguments": ...}`` without the tags (what Qwen2.5-Coder-0.5B/1.5B answer, although their
prompt asks for the tags), as one: while the start of the reply can still be that, it is held;
the object ends where its JSON does, and what follows is read the same way again. Any other
JSON object there is dropped, never spoken (a small model imitating a tool's result:
``{"error": ...}``).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable

from voxbus.services.llm.chatml import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from voxbus.services.llm.engine import TextDelta, ToolCallDelta


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


#: The tags a call comes in: Hermes' ``<tool_call>``, and ``<tools>``, which Qwen2.5-Coder
#: sometimes writes instead (the tag its prompt lists the signatures in).
TAGS: tuple[tuple[str, str], ...] = ((TOOL_CALL_OPEN, TOOL_CALL_CLOSE), ("<tools>", "</tools>"),
                                     ("<tool_response>", "</tool_response>"))
#: A block a small model writes in imitation of the prompt: never a call, never spoken.
_ECHO_OPEN = "<tool_response>"
_BARE_START = "{"
_SPACE = re.compile(r"\s+")
_DECODER = json.JSONDecoder()


def _bare_start(text: str) -> bool | None:
    """Whether ``text`` (stripped) starts a bare call object: True, False, or None (can't tell
    yet: it is a proper prefix of ``{"name":``, whitespace aside)."""
    head = _SPACE.sub("", text[: 4 * len(_BARE_START)])
    if head.startswith(_BARE_START):
        return True
    return None if _BARE_START.startswith(head) else False


def _never_json(exc: json.JSONDecodeError, body: str) -> bool:
    """The JSON error is inside what came, not at its end: no more text can make it JSON (an
    unterminated string reports where the string starts, and more text may end it)."""
    return not exc.msg.startswith("Unterminated string") and exc.pos < len(body.rstrip())


def _partial_tag_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ToolCallExtractor:
    def __init__(self, *, id_factory: Callable[[], str] = new_call_id,
                 bare_json: bool = False) -> None:
        self._id_factory = id_factory
        self._buf = ""
        self._inside = False
        self._close = TOOL_CALL_CLOSE
        self._echo = False
        self.echoes = 0
        self._at_start = bare_json  # nothing but whitespace and bare calls so far
        self._inside_bare = False
        self.calls = 0
        self.malformed = 0

    def feed(self, text: str) -> list[TextDelta | ToolCallDelta]:
        self._buf += text
        out: list[TextDelta | ToolCallDelta] = []
        while True:
            if self._inside_bare:
                body = self._buf.lstrip()
                try:
                    _, end = _DECODER.raw_decode(body)
                except json.JSONDecodeError as exc:
                    if _never_json(exc, body):  # "{curly} braces": text after all
                        self._inside_bare = False
                        continue
                    return out  # not whole yet
                out.extend(self._parse(body[:end]))
                self._buf = body[end:]
                self._inside_bare = False
                self._at_start = True
            elif self._at_start:
                if not self._buf.strip():
                    return out
                bare = _bare_start(self._buf.lstrip())
                if bare is None:
                    return out
                self._at_start = False
                self._inside_bare = bare
            elif self._inside:
                end = self._buf.find(self._close)
                if end < 0:
                    return out
                if self._echo:
                    self.echoes += 1
                else:
                    out.extend(self._parse(self._buf[:end]))
                self._buf = self._buf[end + len(self._close) :]
                self._inside = False
            else:
                found = [(self._buf.find(o), o, c) for o, c in TAGS if o in self._buf]
                if not found:
                    keep = max(_partial_tag_suffix(self._buf, o) for o, _ in TAGS)
                    emit = self._buf[: len(self._buf) - keep]
                    self._buf = self._buf[len(self._buf) - keep :]
                    if emit:
                        out.append(TextDelta(emit))
                    return out
                start, opening, self._close = min(found)
                if start:
                    out.append(TextDelta(self._buf[:start]))
                self._buf = self._buf[start + len(opening) :]
                self._inside = True
                self._echo = opening == _ECHO_OPEN

    def finish(self) -> list[TextDelta | ToolCallDelta]:
        """Flush at the end of generation (an unclosed block is parsed if it is complete JSON)."""
        buf, self._buf = self._buf, ""
        if self._inside and self._echo:
            self._inside = False
            self.echoes += 1
            return []
        if self._inside or self._inside_bare:
            self._inside = self._inside_bare = False
            return list(self._parse(buf))
        return [TextDelta(buf)] if buf else []

    def _parse(self, body: str) -> list[ToolCallDelta]:
        try:
            parsed: object = json.loads(body)
        except json.JSONDecodeError:
            self.malformed += 1
            return []
        items = parsed if isinstance(parsed, list) else [parsed]
        calls: list[ToolCallDelta] = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                self.malformed += 1
                continue
            args = item.get("arguments", {})
            arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
            call_id = self._id_factory()
            calls.append(ToolCallDelta(id=call_id, name=item["name"], arguments=arguments))
        self.calls += len(calls)
        return calls
