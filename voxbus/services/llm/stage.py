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
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from voxbus.contracts.messages import (
    AgentSpoke,
    AnyMessage,
    EndOfTurn,
    ErrorEvent,
    Interrupt,
    Message,
    ReplyEnd,
    ReplyText,
    SessionEnded,
    TurnResumed,
)
from voxbus.contracts.streams import state_bucket
from voxbus.contracts.subjects import Kind
from voxbus.runtime import metrics
from voxbus.runtime.sessions import SessionScope
from voxbus.runtime.stage import Context, SessionPolicy
from voxbus.services.llm.engine import (
    ChatMessage,
    FinishDelta,
    LLMBackendError,
    LLMEngine,
    TextDelta,
    ToolCallDelta,
    assistant_message,
)
from voxbus.services.llm.history import HistoryLimits, HistoryStore, needs_space, truncate_reply
from voxbus.services.llm.llama_engine import LlamaCppEngine
from voxbus.services.llm.openai_engine import OpenAICompatEngine
from voxbus.services.llm.pool import EnginePool, Prewarmable
from voxbus.services.llm.settings import LlmSettings
from voxbus.services.llm.tools import ToolExecutor

log = structlog.get_logger("voxbus.llm")
EndReason = Literal["done", "interrupted", "error", "length"]
SAVE_GRACE_S = 5.0


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
    engines: list[LLMEngine] = [LlamaCppEngine(
        model_path=settings.model_path,
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        n_threads_batch=settings.n_threads_batch,
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        tool_mode="hermes" if settings.tools else "off",
        nice=settings.nice,
    ) for _ in range(settings.engines)]
    return engines[0] if len(engines) == 1 else EnginePool(engines)


@dataclass(slots=True)
class TurnStats:
    """Timings of one handled turn (``time.time_ns`` clock, comparable with ``EndOfTurn.at_ns``)."""

    session: str
    turn: int
    started_ns: int
    first_token_ns: int | None = None
    first_text_ns: int | None = None
    done_ns: int | None = None
    text_deltas: int = 0
    rounds: int = 0
    reason: EndReason | None = None
    speculated: bool = False  # the reply was a guess's, adopted at commit

    def ms(self, at_ns: int | None) -> float | None:
        return None if at_ns is None else round((at_ns - self.started_ns) / 1e6, 1)


class _Reply:
    """The reply of one turn as it is generated: the text (model rounds joined), the end of what
    was already published, and the history messages produced so far.

    Text goes out as it comes (one ``ReplyText`` per engine delta, spans contiguous): the TTS
    alone decides where speech units end."""

    def __init__(self, session: str, turn: int, speculation: int = 0) -> None:
        self.session = session
        self.turn = turn
        self.speculation = speculation
        self.text = ""
        self.sent = 0  # text[:sent] has been yielded as ReplyText
        self.messages: list[ChatMessage] = []  # finished rounds: assistant, tool results
        self.round: list[str] = []  # raw text of the round in progress
        self.end_call = False  # end_call ran: hang up after this reply
        self._seq = 0
        self._new_round = False

    @property
    def published(self) -> str:
        return self.text[: self.sent]

    def push(self, piece: str) -> list[ReplyText]:
        self.round.append(piece)
        if self._new_round:
            self._new_round = False
            if needs_space(self.text, piece):
                piece = " " + piece
        self.text += piece
        return self._rest()

    def end_round(self, calls: list[ToolCallDelta]) -> None:
        """Close the model's round (its text was published as it came)."""
        self.messages.append(assistant_message("".join(self.round), calls))
        self.round = []
        self._new_round = True

    def say(self, text: str) -> list[ReplyText]:
        """Replace the unpublished rest with ``text`` (the apology)."""
        self.text = self.text[: self.sent]
        self.text += (" " if needs_space(self.text, text) else "") + text
        self.messages = [assistant_message(self.text)]
        return self._rest()

    def heard_so_far(self) -> list[ChatMessage]:
        """History messages of an unfinished reply, cut at what was published."""
        pending = [assistant_message("".join(self.round))] if self.round else []
        return truncate_reply(self.messages + pending, self.sent)

    def _rest(self) -> list[ReplyText]:
        end = len(self.text)
        if end <= self.sent:
            return []
        out = ReplyText(
            session=self.session, turn=self.turn, seq=self._seq, text=self.text[self.sent : end],
            char_start=self.sent, char_end=end, emitted_ns=time.time_ns(),
            speculation=self.speculation,
        )
        self._seq += 1
        self.sent = end
        return [out]


@dataclass(eq=False, kw_only=True)
class _Guess:
    """A reply started on a speculative ``EndOfTurn``, generated by ``task``."""

    turn: int
    number: int
    prompt: list[ChatMessage]  # the conversation it answers (history + the guessed words)
    reply: _Reply
    stats: TurnStats
    task: asyncio.Task[None] | None = None
    error: LLMBackendError | TimeoutError | None = None


@dataclass(slots=True)
class SpeculationStats:
    started: int = 0
    adopted: int = 0  # the commit named the guess: its reply was the reply
    dropped: int = 0  # voided (the user went on, or the commit's words differ)


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
        if self._close_engine:
            await self.engine.aclose()

    async def open(self, scope: SessionScope) -> LlmSession:
        return LlmSession(self, scope)

    # ---- messages ---------------------------------------------------------------------------

    async def handle(
        self, msg: AnyMessage, ctx: Context, session: LlmSession
    ) -> AsyncIterator[Message]:
        if isinstance(msg, EndOfTurn) and msg.speculative:
            await self._guess(msg, ctx, session)
        elif isinstance(msg, EndOfTurn):
            async for out in self._turn(msg, ctx, session):
                yield out
        elif isinstance(msg, TurnResumed):
            session.drop_guess(lambda g: g.turn == msg.turn and g.number == msg.speculation,
                               "resumed")
        elif isinstance(msg, AgentSpoke):
            if msg.interrupted:
                await (await self._store(ctx)).mark_spoken(msg.session, msg.turn, msg.char_end)
                ctx.log.info("llm_reply_cut", char_end=msg.char_end,
                             pii={"heard": msg.text[: msg.char_end]})
        elif isinstance(msg, Interrupt):
            session.drop_guess(lambda g: g.turn <= msg.turn, "interrupted")
            ctx.log.info("llm_interrupted", reason=msg.reason)
        elif isinstance(msg, SessionEnded):
            await (await self._store(ctx)).delete(msg.session)
            ctx.log.info("llm_history_deleted", reason=msg.reason)

    async def _store(self, ctx: Context) -> HistoryStore:
        return HistoryStore(await ctx.bus.kv(state_bucket(ctx.region)), self._limits)

    async def _guess(self, msg: EndOfTurn, ctx: Context, session: LlmSession) -> None:
        """Start the reply to a speculative turn's words (see the module's docstring)."""
        user = msg.transcript.strip()
        session.drop_guess(lambda g: True, "replaced")
        if not user or not self.settings.speculate or msg.turn <= session.committed_turn:
            return
        history = await (await self._store(ctx)).load(msg.session)
        if history.find(msg.turn) is not None:  # committed already (a redelivered guess)
            return
        guess = _Guess(
            turn=msg.turn, number=msg.speculation,
            prompt=[*history.messages(), {"role": "user", "content": user}],
            reply=_Reply(msg.session, msg.turn, msg.speculation),
            stats=TurnStats(session=msg.session, turn=msg.turn, started_ns=time.time_ns()),
        )
        guess.task = session.scope.spawn(self._run_guess(guess, ctx, session),
                                         name=f"llm-guess-{msg.session}")
        session.guess = guess
        self.speculation.started += 1
        ctx.log.info("llm_guess_started", speculation=msg.speculation, pii={"user": user})

    async def _prewarm(self, messages: list[ChatMessage], ctx: Context) -> None:
        if not isinstance(self.engine, Prewarmable):
            return
        started = time.perf_counter()
        try:
            done = await self.engine.prewarm(messages)
        except LLMBackendError as exc:
            ctx.log.warning("llm_prewarm_failed", error=str(exc))
            return
        ctx.log.info("llm_prewarmed", messages=len(messages), completed=done,
                     ms=round((time.perf_counter() - started) * 1000))

    async def _run_guess(self, guess: _Guess, ctx: Context, session: LlmSession) -> None:
        stats = guess.stats
        try:
            async with contextlib.aclosing(
                self._generate([self._system, *guess.prompt], guess.reply, stats, ctx)
            ) as gen:
                async for out in gen:
                    if stats.first_text_ns is None:
                        stats.first_text_ns = time.time_ns()
                    await session.scope.publish(out)
        except (LLMBackendError, TimeoutError) as exc:
            guess.error = exc  # the commit that adopts it apologises

    async def _turn(
        self, msg: EndOfTurn, ctx: Context, session: LlmSession
    ) -> AsyncIterator[Message]:
        user = msg.transcript.strip()
        session.committed_turn = max(session.committed_turn, msg.turn)
        if not user:
            session.drop_guess(lambda g: g.turn <= msg.turn, "empty_commit")
            ctx.log.info("llm_turn_ignored", reason="empty_transcript")
            return
        stats = TurnStats(session=msg.session, turn=msg.turn, started_ns=time.time_ns())
        committed_ns = stats.started_ns
        store = await self._store(ctx)
        history = await store.begin_turn(msg.session, msg.turn, user)
        prompt = [self._system, *history.messages()]
        ctx.log.info("llm_turn_started", history_turns=len(history.turns), pii={"user": user})
        reply = _Reply(msg.session, msg.turn, msg.speculation)
        guess = session.adopt(msg, prompt[1:])
        if guess is not None:
            self.speculation.adopted += 1
            metrics.SPECULATION.add(1, {"stage": self.name, "outcome": "hit"})
            reply, stats = guess.reply, guess.stats
            stats.speculated = True
        saved = False
        try:
            try:
                if guess is not None and guess.task is not None:
                    await guess.task  # its text went out as it came (cancelled with us)
                    if guess.error is not None:
                        raise guess.error
                else:
                    async with contextlib.aclosing(
                        self._generate(prompt, reply, stats, ctx)
                    ) as gen:
                        async for out in gen:
                            if stats.first_text_ns is None:
                                stats.first_text_ns = time.time_ns()
                            yield out
            except (LLMBackendError, TimeoutError) as exc:
                stats.reason = "error"
                detail = str(exc) or f"no token from the backend in {self.settings.timeout_s} s"
                ctx.log.warning("llm_backend_failed", error=detail)
                for out in reply.say(self.settings.apology):
                    yield out
                yield ErrorEvent(
                    session=msg.session, turn=msg.turn, code="llm_backend", message=detail[:500],
                    stage=self.name, at_ns=time.time_ns(),
                )
            saved_history = await store.set_reply(msg.session, msg.turn, reply.messages)
            saved = True
            if saved_history.turns and saved_history.turns[0].turn != history.turns[0].turn:
                # the oldest turns went: the next prompt starts differently, and reading it all
                # again would take seconds on a CPU (4.5 s to the first token here after 16
                # turns); read it now, while the caller listens, on the engine it will take
                session.scope.spawn(self._prewarm([self._system, *saved_history.messages()],
                                                  ctx), name=f"llm-prewarm-{msg.session}")
            reason = stats.reason or "done"
            stats.done_ns = time.time_ns()
            self.recent.append(stats)
            metrics.TURNS.add(1, {"stage": self.name})
            if stats.first_text_ns is not None:  # an adopted guess's may precede the commit
                metrics.STAGE_DELAY.record(max(0.0, (stats.first_text_ns - committed_ns) / 1e9),
                                           {"stage": self.name, "step": "first_text"})
            ctx.log.info(
                "llm_turn_done", reason=reason, rounds=stats.rounds, deltas=stats.text_deltas,
                speculated=stats.speculated,
                first_token_ms=stats.ms(stats.first_token_ns),
                first_text_ms=stats.ms(stats.first_text_ns), total_ms=stats.ms(stats.done_ns),
                pii={"reply": reply.published},
            )
            yield ReplyEnd(
                session=msg.session, turn=msg.turn, text=reply.published, reason=reason,
                end_call=reply.end_call, emitted_ns=time.time_ns(),
                speculation=reply.speculation,
            )
        finally:
            if guess is not None and guess.task is not None:
                guess.task.cancel()  # the handler was cancelled (barge-in): so is its text
            if not saved:  # interrupted (cancelled or closed): keep what was published
                ctx.log.info("llm_turn_cut", published_chars=reply.sent)
                session.save_later(
                    store.set_reply(msg.session, msg.turn, reply.heard_so_far()), ctx
                )

    async def _generate(
        self, prompt: list[ChatMessage], reply: _Reply, stats: TurnStats, ctx: Context
    ) -> AsyncGenerator[ReplyText, None]:
        """Model rounds until a round calls no tool; raises LLMBackendError or TimeoutError."""
        max_rounds = self.settings.max_tool_rounds
        while True:
            stats.rounds += 1
            tools = self._tools if stats.rounds <= max_rounds else None
            calls: list[ToolCallDelta] = []
            async with contextlib.aclosing(
                self.engine.stream([*prompt, *reply.messages], tools=tools)
            ) as stream:
                while True:
                    async with asyncio.timeout(self.settings.timeout_s):
                        delta = await anext(stream, None)
                    if delta is None:
                        break
                    if isinstance(delta, TextDelta):
                        if stats.first_token_ns is None:
                            stats.first_token_ns = time.time_ns()
                        stats.text_deltas += 1
                        for out in reply.push(delta.text):
                            yield out
                    elif isinstance(delta, ToolCallDelta):
                        calls.append(delta)
                    elif isinstance(delta, FinishDelta) and delta.reason == "length":
                        stats.reason = "length"
            calls = calls if tools else []
            reply.end_round(calls)
            if not calls:
                break
            for call in calls:
                result, message = self._executor.run(call)
                ctx.log.info("llm_tool_called", tool=call.name, ok=result.ok,
                             pii={"arguments": call.arguments, "result": result.content})
                reply.messages.append(message)
                reply.end_call |= result.end_call


class LlmSession:
    """A session's handler: the stage keeps nothing per session but the saves of interrupted
    replies still under way (the conversation itself is in KV)."""

    def __init__(self, stage: LlmStage, scope: SessionScope) -> None:
        self.stage = stage
        self.scope = scope
        self._saving: set[asyncio.Task[Any]] = set()
        self.guess: _Guess | None = None  # the reply being prepared for a speculative turn
        self.committed_turn = 0  # the last turn whose committed EndOfTurn came here

    @property
    def busy(self) -> bool:
        guessing = self.guess is not None and self.guess.task is not None and (
            not self.guess.task.done())
        return guessing or any(not t.done() for t in self._saving)

    def drop_guess(self, which: Callable[[_Guess], bool], why: str) -> None:
        guess = self.guess
        if guess is None or not which(guess):
            return
        self.guess = None
        if guess.task is not None:
            guess.task.cancel()
        self.stage.speculation.dropped += 1
        metrics.SPECULATION.add(1, {"stage": "llm", "outcome": "miss"})
        self.scope.log.info("llm_guess_dropped", turn=guess.turn, speculation=guess.number,
                            why=why, published_chars=guess.reply.sent)

    def adopt(self, msg: EndOfTurn, conversation: list[ChatMessage]) -> _Guess | None:
        """The guess the committed ``msg`` names; any other guess of the turn (or before) is
        dropped. A named guess is adopted even if the history changed under it (an earlier
        reply cut to what was heard after it started): its text is already out under the ids
        of that guess, and a second text under the same ids would reach the caller mixed."""
        guess = self.guess
        if (guess is not None and msg.speculation and guess.turn == msg.turn
                and guess.number == msg.speculation):
            self.guess = None
            if guess.prompt != conversation:
                self.scope.log.info("llm_guess_history_changed", turn=guess.turn)
            return guess
        self.drop_guess(lambda g: g.turn <= msg.turn, "not_committed")
        return None

    def handle(self, msg: AnyMessage, ctx: Context) -> AsyncIterator[Message]:
        return self.stage.handle(msg, ctx, self)

    def save_later(self, save: Coroutine[Any, Any, object], ctx: Context) -> None:
        async def run() -> None:
            try:
                await save
            except Exception as exc:  # noqa: BLE001 - a lost partial reply is only logged
                ctx.log.warning("llm_history_save_failed", error=repr(exc))

        task = self.scope.spawn(run(), name="llm-save-partial")
        self._saving.add(task)
        task.add_done_callback(self._saving.discard)

    async def close(self, reason: str) -> None:
        if self._saving:
            await asyncio.wait(self._saving, timeout=SAVE_GRACE_S)
