"""The LLM service's engines: in-process llama.cpp, any OpenAI-compatible server, a scripted fake;
plus the clause chunker that feeds TTS and the agent's tools."""

from voxbus.services.llm.engine import (
    ChatMessage,
    FinishDelta,
    FinishReason,
    LLMBackendError,
    LLMDelta,
    LLMEngine,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    assistant_message,
    tool_result_message,
)
from voxbus.services.llm.fake import FakeLLM, FakeTurn
from voxbus.services.llm.llama_engine import GenerationStats, LlamaCppEngine, default_model_path
from voxbus.services.llm.openai_engine import OpenAICompatEngine
from voxbus.services.llm.tools import (
    DEFAULT_TOOLS,
    END_CALL,
    GET_CURRENT_TIME,
    ToolExecutor,
    ToolResult,
)

__all__ = [
    "DEFAULT_TOOLS",
    "END_CALL",
    "GET_CURRENT_TIME",
    "ChatMessage",
    "FakeLLM",
    "FakeTurn",
    "FinishDelta",
    "FinishReason",
    "GenerationStats",
    "LLMBackendError",
    "LLMDelta",
    "LLMEngine",
    "LlamaCppEngine",
    "OpenAICompatEngine",
    "TextDelta",
    "ToolCall",
    "ToolCallDelta",
    "ToolExecutor",
    "ToolResult",
    "ToolSpec",
    "assistant_message",
    "default_model_path",
    "tool_result_message",
]
