"""The LLM stage: a user's turn in, the agent's reply out as text deltas.

On ``EndOfTurn`` it records the user's words in the session's history (on the bus, so any replica
can take the next turn), streams the engine on system prompt + history, and yields a ``ReplyText``
for each piece of text the engine gives (the TTS alone decides where its speech units end), then
``ReplyEnd`` once the reply and the updated history are saved. Tool calls run in the same turn
and the model continues after their results; ``end_call`` ends the call after the goodbye. A
failing or silent backend gives an ``ErrorEvent`` and a spoken apology rather than silence.

Speculation: a speculative ``EndOfTurn`` (the user fell silent, the turn not committed yet)
starts the reply to its words at once, in a task of the session outside the lane, on the history
as it stands plus those words; its text goes out tagged with the guess's number, and nothing is
written to the history. The committed ``EndOfTurn`` adopts it when it names that guess (the turn
handler then waits for it instead of generating), else cancels it and generates anew (tagged
with the commit's ``speculation``, so the bridge plays it). ``TurnResumed`` (the user went on)
and an ``Interrupt`` cancel it at the next token: a dropped guess costs the tokens generated so
far and never enters the history.

Barge-in: the runtime cancels the handler of the interrupted turn; leaving the engine's stream
stops generation at once. What was published of the reply is saved; the bridge's ``AgentSpoke``
then cuts it to what the user actually heard. ``AgentSpoke`` is an *urgent* kind here, not a lane
input: the runtime skips lane messages of an interrupted turn, and ``AgentSpoke`` for that very
turn is the one message that must not be skipped. History writes are compare-and-set, so the two
paths may land in any order.

Backchannels: a turn of backchannel words only ("mhm", "okay": ``runtime.backchannel``) said while
the last reply may still be playing (the history has no ``AgentSpoke`` for it yet: the bridge
paused it and plays it on) gets no reply, no guess and no place in the history; its turn is
committed empty. Once the reply was heard, the same words are a turn like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncGenerator

import structlog

from voxbus.agents.outcomes import ToolOutcomes
from voxbus.agents.registry import AgentRegistry, SessionAgents, UnknownAgent
from voxbus.contracts.agents import SessionAgent
from voxbus.contracts.messages import Message
from voxbus.contracts.streams import agents_bucket
from voxbus.contracts.subjects import Kind
from voxbus.runtime.scope import SessionScope
from voxbus.runtime.stage import Context, SessionPolicy, StageBus
from voxbus.services.llm.calls import CallScope, run_calls
from voxbus.services.llm.engine import (
    ChatMessage,
    FinishDelta,
    LLMBackendError,
    LLMEngine,
    TextDelta,
    ToolCallDelta,
    ToolSpec,
)
from voxbus.services.llm.history import HistoryLimits, HistoryStore
from voxbus.services.llm.llama_engine import LlamaCppEngine
from voxbus.services.llm.models import resolve_model
from voxbus.services.llm.openai_engine import OpenAICompatEngine
from voxbus.services.llm.persona import Persona, agent_persona, default_persona
from voxbus.services.llm.pool import EnginePool, Prewarmable
from voxbus.services.llm.reply import Reply, TurnStats
from voxbus.services.llm.session import LlmSession, SpeculationStats
from voxbus.services.llm.settings import LlmSettings
from voxbus.services.llm.tools import ToolExecutor

log = structlog.get_logger("voxbus.llm")


def build_engine(settings: LlmSettings) -> LLMEngine:
    """The engine the settings ask for (not loaded yet: the stage warms it up in ``start``)."""
    if settings.backend == "openai":
        return OpenAICompatEngine(
            base_url=settings.base_url,
            model=settings.model,
            api_key=settings.api_key,
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            read_timeout_s=settings.timeout_s,
        )
    model = resolve_model(settings)
    engines: list[LLMEngine] = [LlamaCppEngine(
        model_path=model.path,
        default_system_prompt=model.default_system,
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        n_threads_batch=settings.n_threads_batch,
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        tool_mode="hermes",  # tools are offered per reply (an agent's, or LLM_TOOLS)
        nice=settings.nice,
    ) for _ in range(settings.engines)]
    return engines[0] if len(engines) == 1 else EnginePool(engines)


class LlmStage:
    name = "llm"
    inputs: tuple[Kind, ...] = (Kind.TURN, Kind.SESSION)
    urgent: tuple[Kind, ...] = (Kind.INTERRUPT, Kind.SPOKEN)

    def __init__(
        self,
        engine: LLMEngine,
        settings: LlmSettings | None = None,
        *,
        executor: ToolExecutor | None = None,
        close_engine: bool = True,
    ) -> None:
        self.engine = engine
        self.settings = settings or LlmSettings()
        self._executor = executor or ToolExecutor()
        self._tools = list(self._executor.specs) if self.settings.tools else None
        self._system: ChatMessage = {"role": "system", "content": self.settings.system_prompt}
        self._limits = HistoryLimits(
            max_turns=self.settings.history_max_turns, max_chars=self.settings.history_max_chars
        )
        self._close_engine = close_engine
        self.policy = SessionPolicy()  # no per-worker limit: the engine serializes anyway
        #: The last turns handled here, for benchmarks and diagnostics.
        self.recent: deque[TurnStats] = deque(maxlen=256)
        self.speculation = SpeculationStats()
        #: Reading the default agent's prompt in, one task per connection (``serve``'s
        #: ``before`` runs once per region group).
        self._warming: list[asyncio.Task[None]] = []

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the model and evaluate the system prompt, so the first turn starts warm. A remote
        backend that is down now may be up by the first turn: that is only logged."""
        try:
            await self.engine.warmup([self._system])
        except LLMBackendError as exc:
            if self.settings.backend == "llama":
                raise
            log.warning("llm_warmup_failed", error=str(exc))

    async def stop(self) -> None:
        for task in self._warming:
            task.cancel()
        await asyncio.gather(*self._warming, return_exceptions=True)
        if self._close_engine:
            await self.engine.aclose()

    async def open(self, scope: SessionScope) -> LlmSession:
        return LlmSession(self, scope)

    # ---- what its sessions use (``session.LlmWorker``) -----------------------------------------

    @property
    def system(self) -> ChatMessage:
        return self._system

    async def store(self, ctx: Context) -> HistoryStore:
        return HistoryStore(await ctx.bus.state(ctx.region), self._limits)

    async def prewarm(self, messages: list[ChatMessage], ctx: Context,
                      tools: list[ToolSpec] | None = None) -> None:
        if not isinstance(self.engine, Prewarmable):
            return
        started = time.perf_counter()
        try:
            done = await self.engine.prewarm(messages, tools)
        except LLMBackendError as exc:
            ctx.log.warning("llm_prewarm_failed", error=str(exc))
            return
        ctx.log.info("llm_prewarmed", messages=len(messages), completed=done,
                     ms=round((time.perf_counter() - started) * 1000))

    async def generate(
        self, prompt: list[ChatMessage], reply: Reply, stats: TurnStats, ctx: Context,
        calls: CallScope,
    ) -> AsyncGenerator[Message, None]:
        """Model rounds until a round calls no tool; raises LLMBackendError or TimeoutError.
        Yields the reply's text, and the tool calls for the session's tool workers."""
        max_rounds = self.settings.max_tool_rounds
        while True:
            stats.rounds += 1
            tools = calls.persona.tools if stats.rounds <= max_rounds else None
            found: list[ToolCallDelta] = []
            sampling = calls.persona.sampling
            extra = {"sampling": sampling} if sampling is not None else {}
            async with contextlib.aclosing(
                self.engine.stream([*prompt, *reply.messages], tools=tools, **extra)
            ) as stream:
                wait_s = self.settings.first_token_timeout_s
                while True:
                    async with asyncio.timeout(wait_s):
                        delta = await anext(stream, None)
                    wait_s = self.settings.timeout_s
                    if delta is None:
                        break
                    if isinstance(delta, TextDelta):
                        if stats.first_token_ns is None:
                            stats.first_token_ns = time.time_ns()
                        stats.text_deltas += 1
                        for out in reply.push(delta.text):
                            yield out
                    elif isinstance(delta, ToolCallDelta):
                        found.append(delta)
                    elif isinstance(delta, FinishDelta) and delta.reason == "length":
                        stats.reason = "length"
            found = found if tools else []
            reply.end_round(found)
            if not found:
                break
            async with contextlib.aclosing(run_calls(found, reply, stats, calls, ctx)) as running:
                async for message in running:
                    yield message

    # ---- agents ---------------------------------------------------------------------------------

    async def warm_default_agent(self, bus: StageBus, wait_s: float = 60.0) -> None:
        """With ``LLM_AGENT``: read that agent's prompt and tools into every engine's cache, so
        no caller's first reply reads a thousand tokens first. The agent may be published a
        moment after this worker starts (its tools worker publishes it): waited for, in the
        background."""
        if not self.settings.agent or not isinstance(self.engine, Prewarmable):
            return

        async def warm() -> None:
            deadline = time.monotonic() + wait_s
            for region in bus.regions:
                registry = AgentRegistry(await bus.kv(agents_bucket(region)))
                while True:
                    try:
                        agent = await registry.session_copy(self.settings.agent)
                        break
                    except UnknownAgent:
                        if time.monotonic() > deadline:
                            log.warning("llm_default_agent_unknown", agent=self.settings.agent,
                                        region=region)
                            return
                        await asyncio.sleep(0.5)
                persona = self.persona(agent)
                started = time.perf_counter()
                engine = self.engine
                if isinstance(engine, EnginePool):
                    done = await engine.prewarm_each([persona.system], persona.tools)
                elif isinstance(engine, Prewarmable):
                    done = int(await engine.prewarm([persona.system], persona.tools))
                log.info("llm_agent_prewarmed", agent=persona.agent, engines=done,
                         ms=round((time.perf_counter() - started) * 1000))

        self._warming.append(asyncio.create_task(warm(), name="llm-warm-agent"))

    def persona(self, agent: SessionAgent | None) -> Persona:
        """Who answers: the session's agent, else this worker's system prompt and tools."""
        return agent_persona(agent) if agent is not None else default_persona(
            self._system, self._tools)

    async def registry(self, ctx: Context) -> AgentRegistry:
        return AgentRegistry(await ctx.bus.kv(agents_bucket(ctx.region)))

    async def session_agents(self, ctx: Context) -> SessionAgents:
        return SessionAgents(await ctx.bus.state(ctx.region))

    async def outcomes(self, ctx: Context) -> ToolOutcomes:
        return ToolOutcomes(await ctx.bus.state(ctx.region))

    @property
    def executor(self) -> ToolExecutor:
        return self._executor
