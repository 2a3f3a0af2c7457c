"""ChatML prompt rendering (SmolLM2, Qwen2.5 and most small instruct GGUFs), as token-ready parts.

The prompt is rendered message by message into parts. Template markers (``<|im_start|>user\\n``) are
tokenized with special tokens enabled; message content is tokenized as plain text (so a user cannot
inject ``<|im_end|>``). Every message renders the same way every turn, so turn N+1's tokens start
with exactly turn N's tokens and llama.cpp reuses its KV cache for the whole shared history.

Assistant content is marked ``reply=True`` so the engine can substitute the very tokens it sampled
for that text (re-tokenizing generated text need not give the same tokens back).

Tools use the Hermes / Qwen2.5 convention: signatures in the system prompt inside ``<tools>``,
calls as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, results as a user turn
wrapped in ``<tool_response>``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from voxbus.services.llm.engine import ChatMessage, ToolSpec

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

# What SmolLM2's own chat template inserts when the conversation has no system message.
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

_TOOLS_HEADER = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


@dataclass(frozen=True, slots=True)
class PromptPart:
    text: str
    special: bool  # template markup: tokenize with special tokens enabled
    reply: bool = False  # assistant-generated content


def tools_system_suffix(tools: Sequence[ToolSpec]) -> str:
    lines = "".join("\n" + json.dumps(tool, ensure_ascii=False) for tool in tools)
    return _TOOLS_HEADER + lines + _TOOLS_FOOTER


def _tool_call_text(name: str, arguments: str) -> str:
    try:
        args: object = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        args = arguments
    body = json.dumps({"name": name, "arguments": args}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def render_chatml(
    messages: Sequence[ChatMessage],
    *,
    tools: Sequence[ToolSpec] | None = None,
    default_system: str | None = SMOLLM2_DEFAULT_SYSTEM,
    add_generation_prompt: bool = True,
) -> list[PromptPart]:
    """Render ``messages`` as ChatML parts, ending with the assistant header when asked."""
    parts: list[PromptPart] = []
    msgs = list(messages)
    if default_system is not None and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": default_system})
    for index, message in enumerate(msgs):
        role = message["role"]
        content = message.get("content") or ""
        if role == "system":
            if index == 0 and tools:
                content += tools_system_suffix(tools)
            parts.append(PromptPart(f"{IM_START}system\n", special=True))
            parts.append(PromptPart(content, special=False))
        elif role == "user":
            parts.append(PromptPart(f"{IM_START}user\n", special=True))
            parts.append(PromptPart(content, special=False))
        elif role == "assistant":
            parts.append(PromptPart(f"{IM_START}assistant\n", special=True))
            if content:
                parts.append(PromptPart(content, special=False, reply=True))
            for i, call in enumerate(message.get("tool_calls", [])):
                sep = "\n" if content or i else ""
                fn = call["function"]
                text = sep + _tool_call_text(fn["name"], fn["arguments"])
                parts.append(PromptPart(text, special=False))
        else:  # tool result
            parts.append(PromptPart(f"{IM_START}user\n", special=True))
            parts.append(PromptPart(f"<tool_response>\n{content}\n</tool_response>", special=False))
        parts.append(PromptPart(f"{IM_END}\n", special=True))
    if add_generation_prompt:
        parts.append(PromptPart(f"{IM_START}assistant\n", special=True))
    return parts
