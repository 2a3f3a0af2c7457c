"""The LLM stage on a real nats-server: turns in, text deltas out, history in KV, barge-in,
restarts, backend failures and tools. Real-model tests (SmolLM2-135M, temperature 0) are marked
``model`` and share one loaded engine per module."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import (
    AsyncGenerator,
    Iterator,
    Sequence,
)
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REGION
from tests.llm.scripted_openai_server import ScriptedOpenAIServer, Step, text_chunk, tool_chunk
from voxbus.contracts.messages import (
    AgentSpoke,
    AnyMessage,
    EndOfTurn,
    ErrorEvent,
    Interrupt,
    ReplyEnd,
    ReplyText,
    SessionEnded,
    TurnResumed,
)
from voxbus.contracts.streams import state_bucket
from voxbus.runtime.bus import Bus
from voxbus.runtime.testing import Tap, running, wait_until
from voxbus.services.llm.engine import (
    ChatMessage,
    LLMDelta,
    LLMEngine,
    Sampling,
    ToolCallDelta,
    ToolSpec,
)
from voxbus.services.llm.fake import FakeLLM, FakeTurn
from voxbus.services.llm.history import History, HistoryStore, reply_text
from voxbus.services.llm.llama_engine import LlamaCppEngine
from voxbus.services.llm.openai_engine import OpenAICompatEngine
from voxbus.services.llm.settings import DEFAULT_APOLOGY, LlmSettings
from voxbus.services.llm.stage import LlmStage
from voxbus.services.llm.tools import ToolExecutor

NOW = datetime(2026, 11, 24, 13, 5, tzinfo=UTC)
SETTINGS = LlmSettings(temperature=0.0, max_tokens=96)


# ---- helpers --------------------------------------------------------------------------------


class Recording:
    """An engine wrapper that remembers every prompt and when the last stream was closed."""

    def __init__(self, inner: LLMEngine) -> None:
        self.inner = inner
        self.prompts: list[list[ChatMessage]] = []
        self.closed_at = 0.0

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] | None = None,
        sampling: Sampling | None = None,
    ) -> AsyncGenerator[LLMDelta, None]:
        self.prompts.append(list(messages))
        try:
            async with contextlib.aclosing(
                self.inner.stream(messages, tools=tools, sampling=sampling)
            ) as stream:
                async for delta in stream:
                    yield delta
        finally:
            self.closed_at = time.monotonic()

    async def warmup(self, messages: Sequence[ChatMessage] = ()) -> None:
        await self.inner.warmup(messages)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Outputs(Tap):
    """The stage's replies and error events (a runtime ``Tap``), by turn."""

    @classmethod
    async def on(cls, bus: Bus) -> Outputs:
        return await cls.on_bus(bus, REGION, "*.llm.reply", "*.ctl.error")

    def turn_of(self, session: str, turn: int) -> list[AnyMessage]:
        return [m for _, m in self.got if m.session == session and m.turn == turn]

    def chunks(self, session: str, turn: int) -> list[ReplyText]:
        return [m for m in self.turn_of(session, turn) if isinstance(m, ReplyText)]

    async def end(self, session: str, turn: int, timeout_s: float = 30.0) -> ReplyEnd:
        await self.until(lambda t: any(isinstance(m, ReplyEnd)
                                       for m in self.turn_of(session, turn)), timeout_s)
        return next(m for m in self.turn_of(session, turn) if isinstance(m, ReplyEnd))


def turn(session: str, n: int, text: str) -> EndOfTurn:
    now = time.time_ns()
    return EndOfTurn(session=session, turn=n, transcript=text, speech_start_ns=now,
                     speech_end_ns=now, at_ns=now)


async def history(bus: Bus, session: str) -> History:
    return await HistoryStore(await bus.state(REGION)).load(session)


def assert_well_formed(chunks: list[ReplyText], end: ReplyEnd) -> None:
    assert chunks, "no ReplyText"
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert chunks[0].char_start == 0
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert a.char_end == b.char_start, "spans are not contiguous"
    for c in chunks:
        assert c.char_end - c.char_start == len(c.text)
    assert "".join(c.text for c in chunks) == end.text


@pytest.fixture(scope="module")
def smollm2(smollm2_path: Path) -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine(model_path=smollm2_path, n_threads=1, temperature=0.0, max_tokens=96)
    yield engine
    asyncio.run(engine.aclose())


# ---- real model -----------------------------------------------------------------------------


@pytest.mark.model
async def test_smollm2_answers_in_clauses(bus: Bus, smollm2: LlamaCppEngine) -> None:
    out = await Outputs.on(bus)
    async with running(bus, LlmStage(smollm2, SETTINGS, close_engine=False)):
        await bus.publish(REGION, turn("s1", 1, "Hi! What is the capital of France?"))
        end = await out.end("s1", 1)
    chunks = out.chunks("s1", 1)
    assert_well_formed(chunks, end)
    assert end.reason in ("done", "length") and not end.end_call
    saved = (await history(bus, "s1")).messages()
    assert saved[0] == {"role": "user", "content": "Hi! What is the capital of France?"}
    assert reply_text(saved[1:]).startswith(end.text)


@pytest.mark.model
async def test_smollm2_through_llama_cpp_server(bus: Bus, llama_server: str) -> None:
    engine = OpenAICompatEngine(base_url=llama_server, temperature=0.0, max_tokens=48)
    settings = LlmSettings(backend="openai", temperature=0.0, max_tokens=48)
    out = await Outputs.on(bus)
    async with running(bus, LlmStage(engine, settings)):
        await bus.publish(REGION, turn("s1", 1, "What is the capital of France?"))
        end = await out.end("s1", 1)
        await bus.publish(REGION, turn("s1", 2, "And of Italy?"))
        end2 = await out.end("s1", 2)
    assert_well_formed(out.chunks("s1", 1), end)
    assert_well_formed(out.chunks("s1", 2), end2)
    assert [m["role"] for m in (await history(bus, "s1")).messages()] == [
        "user", "assistant", "user", "assistant"
    ]


@pytest.mark.model
async def test_barge_in_stops_the_engine_and_publishes_nothing_stale(
    bus: Bus, smollm2: LlamaCppEngine
) -> None:
    engine = Recording(smollm2)
    out = await Outputs.on(bus)
    async with running(bus, LlmStage(engine, SETTINGS, close_engine=False)):
        await bus.publish(REGION, turn("s1", 1, "Tell me a long story about a brave dragon."))
        await wait_until(lambda: bool(out.chunks("s1", 1)), step_s=0.002)
        t_interrupt = time.monotonic()
        await bus.publish(REGION, Interrupt(session="s1", turn=1, at_ns=time.time_ns()))
        await smollm2.wait_idle()
        t_idle = time.monotonic()
        await asyncio.sleep(0.3)
        late = [t for t, m in out.got if isinstance(m, ReplyText) and t > t_interrupt + 0.05]
        assert not late, "ReplyText of the interrupted turn after the interrupt"
        assert not any(isinstance(m, ReplyEnd) for m in out.turn_of("s1", 1))
        # the stage leaves the engine's stream (bus delivery + cancellation), then llama.cpp's
        # thread stops within a token; each well under 50 ms even on a busy machine
        assert engine.closed_at - t_interrupt < 0.05, "stream read on after the interrupt"
        assert t_idle - engine.closed_at < 0.05, "llama.cpp kept generating"
        assert smollm2.last_stats is not None and smollm2.last_stats.finish is None

        heard = "".join(c.text for c in out.chunks("s1", 1))
        saved = (await history(bus, "s1")).turns
        assert saved[0].user == "Tell me a long story about a brave dragon."
        assert reply_text(saved[0].reply) == heard  # what was published, not what was generated

        cut = max(1, len(heard) // 2)
        await bus.publish(REGION, AgentSpoke(session="s1", turn=1, text=heard, char_end=cut,
                                             interrupted=True))
        await bus.publish(REGION, turn("s1", 2, "What is two plus two?"))
        end = await out.end("s1", 2)
    assert_well_formed(out.chunks("s1", 2), end)
    assert engine.prompts[-1][1:] == [
        {"role": "user", "content": "Tell me a long story about a brave dragon."},
        {"role": "assistant", "content": heard[:cut]},
        {"role": "user", "content": "What is two plus two?"},
    ]


@pytest.mark.model
async def test_context_survives_a_worker_restart(
    bus: Bus, smollm2: LlamaCppEngine, smollm2_path: Path
) -> None:
    out = await Outputs.on(bus)
    async with running(bus, LlmStage(smollm2, SETTINGS, close_engine=False)):
        await bus.publish(REGION, turn("s1", 1, "My name is Alice."))
        first = await out.end("s1", 1)
    fresh = Recording(LlamaCppEngine(model_path=smollm2_path, temperature=0.0, max_tokens=32))
    async with running(bus, LlmStage(fresh, SETTINGS)):
        await bus.publish(REGION, turn("s1", 2, "What is my name?"))
        await out.end("s1", 2)
    saved = (await history(bus, "s1")).turns
    assert [(r.turn, r.user) for r in saved] == [(1, "My name is Alice."), (2, "What is my name?")]
    prompt = fresh.prompts[-1]
    assert prompt[0] == {"role": "system", "content": SETTINGS.system_prompt}
    assert prompt[1] == {"role": "user", "content": "My name is Alice."}
    assert prompt[2]["role"] == "assistant" and (prompt[2]["content"] or "").startswith(first.text)
    assert prompt[3] == {"role": "user", "content": "What is my name?"}


@pytest.mark.model
async def test_a_conversation_cut_short_is_read_before_its_next_turn(
    bus: Bus, smollm2: LlamaCppEngine
) -> None:
    """Past the history's limit the oldest turns go when a reply is saved, and the engine
    reads the shorter conversation then: the next turn evaluates only its own words (without
    that, all of the conversation again: 4.5 s to the first token after 16 turns here)."""
    out = await Outputs.on(bus)
    settings = LlmSettings(temperature=0.0, max_tokens=24, history_max_turns=4)
    async with running(bus, LlmStage(smollm2, settings, close_engine=False)):
        for n in range(1, 5):
            await bus.publish(REGION, turn("cut", n, f"Tell me fact number {n} about owls."))
            await out.end("cut", n)
        # saved with turn 4's reply: the fifth would be past the limit
        assert [r.turn for r in (await history(bus, "cut")).turns] == [3, 4]
        await asyncio.sleep(0.1)  # the caller listens to the reply meanwhile
        await wait_until(lambda: not smollm2.prewarming, timeout_s=10)
        await bus.publish(REGION, turn("cut", 5, "And one about foxes?"))
        await out.end("cut", 5)
    stats = smollm2.last_stats
    assert stats is not None and stats.prompt_tokens - stats.reused_tokens < 25, stats


# ---- control flow (scripted engines) --------------------------------------------------------


async def test_agent_spoke_cuts_the_reply_to_what_was_heard(bus: Bus) -> None:
    said = "Sure, we open at nine. We close at seven."
    fake = FakeLLM([FakeTurn.words(said)])
    out = await Outputs.on(bus)
    async with running(bus, LlmStage(fake, SETTINGS)):
        for n in (1, 2):
            await bus.publish(REGION, turn("s1", n, f"Question {n}?"))
            assert (await out.end("s1", n)).text == said
        await bus.publish(REGION, Interrupt(session="s1", turn=2, at_ns=time.time_ns()))
        for n, char_end in ((1, len("Sure, we open at nine.")), (2, 0)):
            await bus.publish(REGION, AgentSpoke(session="s1", turn=n, text=said,
                                                 char_end=char_end, interrupted=True))
        await bus.publish(REGION, turn("s1", 3, "Question 3?"))
        await out.end("s1", 3)
    assert fake.calls[-1][0][1:] == [
        {"role": "user", "content": "Question 1?"},
        {"role": "assistant", "content": "Sure, we open at nine."},
        {"role": "user", "content": "Question 2?"},  # nothing of reply 2 was heard
        {"role": "user", "content": "Question 3?"},
    ]


async def test_empty_transcript_is_ignored(bus: Bus) -> None:
    fake = FakeLLM([FakeTurn.words("Hello there.")])
    out = await Outputs.on(bus)
    async with running(bus, LlmStage(fake, SETTINGS)):
        await bus.publish(REGION, turn("s1", 1, "  \n "))
        await bus.publish(REGION, turn("s1", 2, "Hello?"))
        await out.end("s1", 2)
    assert out.turn_of("s1", 1) == []
    assert len(fake.calls) == 1
    assert [r.turn for r in (await history(bus, "s1")).turns] == [2]


async def test_session_end_deletes_the_history(bus: Bus) -> None:
    out = await Outputs.on(bus)
    async with running(bus, LlmStage(FakeLLM([FakeTurn.words("Hi.")]), SETTINGS)):
        await bus.publish(REGION, turn("s1", 1, "Hello?"))
        await out.end("s1", 1)
        await bus.publish(REGION, SessionEnded(session="s1", reason="hangup"))
        deleted: list[History] = []

        async def gone() -> bool:
            deleted.append(await history(bus, "s1"))
            return not deleted[-1].turns

        await wait_until(gone)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("failure", ["connection_refused", "timeout"])
async def test_backend_failure_gives_an_error_event_and_an_apology(
    bus: Bus, failure: str
) -> None:
    engine: LLMEngine
    if failure == "connection_refused":
        engine = OpenAICompatEngine(base_url=f"http://127.0.0.1:{_closed_port()}")
        settings = LlmSettings(backend="openai")
    else:
        engine = FakeLLM([FakeTurn.words("Too late.", first_token_delay_s=5.0)])
        settings = LlmSettings(timeout_s=0.2, first_token_timeout_s=0.2)
    out = await Outputs.on(bus)
    async with running(bus, LlmStage(engine, settings)):
        await bus.publish(REGION, turn("s1", 1, "Hello?"))
        end = await out.end("s1", 1)
    assert end.reason == "error" and end.text == DEFAULT_APOLOGY
    assert_well_formed(out.chunks("s1", 1), end)
    errors = [m for m in out.turn_of("s1", 1) if isinstance(m, ErrorEvent)]
    assert [(e.code, e.stage) for e in errors] == [("llm_backend", "llm")]
    assert (await history(bus, "s1")).messages()[-1] == {
        "role": "assistant", "content": DEFAULT_APOLOGY
    }


def scripted_model(body: dict[str, Any]) -> Sequence[Step]:
    """Says a few words and calls a tool; after a tool result, answers from it."""
    last = body["messages"][-1]
    if last["role"] == "user" and "Tokyo" in last["content"]:
        return [
            (0.0, text_chunk("Let me check.")),
            (0.0, tool_chunk(0, call_id="call_1", name="get_current_time")),
            (0.0, tool_chunk(0, arguments='{"timezone": "Asia/Tokyo"}')),
            (0.0, text_chunk(finish="tool_calls")),
            (0.0, "[DONE]"),
        ]
    if last["role"] == "user":  # "bye"
        return [
            (0.0, tool_chunk(0, call_id="call_2", name="end_call", arguments="{}")),
            (0.0, text_chunk(finish="tool_calls")),
            (0.0, "[DONE]"),
        ]
    result = json.loads(last["content"])
    words = ["It", " is", f" {result['time']}", " in", " Tokyo."] if "time" in result else [
        "Goodbye", ",", " have", " a", " nice", " day!"
    ]
    return [*((0.0, text_chunk(w)) for w in words), (0.0, text_chunk(finish="stop"))]


async def test_tool_round_trip_and_end_call(bus: Bus) -> None:
    out = await Outputs.on(bus)
    settings = LlmSettings(backend="openai", tools=True)
    async with ScriptedOpenAIServer(scripted_model) as server:
        engine = OpenAICompatEngine(base_url=server.base_url)
        stage = LlmStage(engine, settings, executor=ToolExecutor(now=lambda: NOW))
        async with running(bus, stage):
            await bus.publish(REGION, turn("s1", 1, "What time is it in Tokyo?"))
            end = await out.end("s1", 1)
            await bus.publish(REGION, turn("s1", 2, "Thanks, bye."))
            bye = await out.end("s1", 2)
    assert end.text == "Let me check. It is 22:05 in Tokyo." and not end.end_call
    chunks = out.chunks("s1", 1)
    assert_well_formed(chunks, end)
    assert chunks[0].text == "Let me check."  # spoken before the tool runs
    warmup, first, second_request = server.requests[:3]
    assert "tools" not in warmup
    assert [t["function"]["name"] for t in first["tools"]] == ["end_call", "get_current_time"]
    second = second_request["messages"]
    assert second[-2]["tool_calls"][0]["function"]["name"] == "get_current_time"
    assert second[-1]["role"] == "tool" and json.loads(second[-1]["content"])["time"] == "22:05"
    assert bye.end_call and bye.text == "Goodbye, have a nice day!"
    roles = [m["role"] for m in (await history(bus, "s1")).messages()]
    assert roles == ["user", "assistant", "tool", "assistant"] * 2


async def test_tool_calls_are_not_offered_when_tools_are_off(bus: Bus) -> None:
    fake = FakeLLM([FakeTurn(tool_calls=[ToolCallDelta(id="c", name="end_call", arguments="")])])
    out = await Outputs.on(bus)
    async with running(bus, LlmStage(fake, SETTINGS)):
        await bus.publish(REGION, turn("s1", 1, "Bye."))
        end = await out.end("s1", 1)
    assert fake.calls[0][1] is None and not end.end_call and len(fake.calls) == 1


@pytest.mark.fast
async def test_a_kv_timeout_during_a_turn_is_retried_not_terminal() -> None:
    """The history read times out once (a NATS restart): the turn is handled again in its lane
    and answered, with no error event."""
    import nats.errors

    from voxbus.runtime.testing import StageRunner

    stage = LlmStage(FakeLLM([FakeTurn.words("Fine, thanks.")]))
    async with StageRunner(stage, region=REGION) as runner:
        kv = await runner.bus.kv(state_bucket(REGION))
        real_get, failures = kv.get, [1]

        async def flaky_get(key: str):  # type: ignore[no-untyped-def]
            if failures:
                failures.pop()
                raise nats.errors.TimeoutError
            return await real_get(key)

        kv.get = flaky_get  # type: ignore[method-assign]
        await runner.send(EndOfTurn(session="flaky", turn=1, transcript="How are you?",
                                    speech_start_ns=0, speech_end_ns=0))
        await runner.tap.until(lambda t: len(t.of(ReplyEnd, "flaky")) == 1, timeout_s=10)
        assert not failures, "the history was never read"
        assert runner.tap.of(ReplyEnd, "flaky")[0].text == "Fine, thanks."
        assert not runner.tap.of(ErrorEvent, "flaky")


# ---- speculation: replies started on a speculative EndOfTurn -----------------------------------


def guess(session: str, n: int, text: str, number: int) -> EndOfTurn:
    now = time.time_ns()
    return EndOfTurn(session=session, turn=n, transcript=text, speech_start_ns=now,
                     speech_end_ns=now, at_ns=now, speculative=True, speculation=number)


def commit(session: str, n: int, text: str, speculation: int) -> EndOfTurn:
    now = time.time_ns()
    return EndOfTurn(session=session, turn=n, transcript=text, speech_start_ns=now,
                     speech_end_ns=now, at_ns=now, speculation=speculation)


async def test_a_backchannel_over_the_playing_reply_gets_no_reply_of_its_own(
    bus: Bus,
) -> None:
    """ "Mhm." while reply 1 still plays (no ``AgentSpoke`` for it yet) is neither answered,
    guessed at nor kept in the conversation; "Okay." once reply 1 was heard is a turn."""
    said = "We open at nine and close at seven."
    fake = FakeLLM([FakeTurn.words(said), FakeTurn.words("Great, see you then.")])
    out = await Outputs.on(bus)
    async with running(bus, LlmStage(fake, SETTINGS)):
        await bus.publish(REGION, turn("s1", 1, "When do you open?"))
        await out.end("s1", 1)
        await bus.publish(REGION, guess("s1", 2, "Mhm.", 1))
        await bus.publish(REGION, commit("s1", 2, "Mm-hmm.", 0))
        await bus.publish(REGION, AgentSpoke(session="s1", turn=1, text=said,
                                             char_end=len(said), interrupted=False))

        async def heard() -> bool:
            record = (await history(bus, "s1")).find(1)
            return record is not None and record.heard is True

        await wait_until(heard)
        await bus.publish(REGION, turn("s1", 3, "Okay."))
        await out.end("s1", 3)
    assert out.turn_of("s1", 2) == [] and len(fake.calls) == 2
    assert [(r.turn, r.user) for r in (await history(bus, "s1")).turns] == [
        (1, "When do you open?"), (3, "Okay.")]
    assert fake.calls[-1][0][1:] == [
        {"role": "user", "content": "When do you open?"},
        {"role": "assistant", "content": said},
        {"role": "user", "content": "Okay."},
    ]


async def test_a_committed_guess_is_the_reply_generated_once(bus: Bus) -> None:
    said = "We open at nine tomorrow."
    fake = FakeLLM([FakeTurn.words(said, token_delay_s=0.02)])
    out = await Outputs.on(bus)
    stage = LlmStage(fake, SETTINGS)
    async with running(bus, stage):
        await bus.publish(REGION, guess("s1", 1, "When do you open?", 1))
        await wait_until(lambda: len(out.chunks("s1", 1)) >= 2)
        assert (await history(bus, "s1")).turns == []  # nothing is written for a guess
        await bus.publish(REGION, commit("s1", 1, "When do you open?", 1))
        end = await out.end("s1", 1)
    assert_well_formed(out.chunks("s1", 1), end)
    assert end.text == said and end.speculation == 1
    assert {c.speculation for c in out.chunks("s1", 1)} == {1}
    assert len(fake.calls) == 1, "the committed turn generated again"
    saved = (await history(bus, "s1")).turns
    assert [(r.turn, r.user, reply_text(r.reply)) for r in saved] == [
        (1, "When do you open?", said)]
    assert (stage.speculation.started, stage.speculation.adopted) == (1, 1)


async def test_a_voided_guess_stops_and_never_enters_the_history(bus: Bus) -> None:
    guessed = "A table for how many people would you like to book this evening?"
    answer = "Four people at eight, booked."
    fake = FakeLLM([FakeTurn.words(answer), FakeTurn.words(guessed, token_delay_s=0.05),
                    FakeTurn.words(answer)])
    out = await Outputs.on(bus)
    stage = LlmStage(fake, SETTINGS)
    async with running(bus, stage):
        await bus.publish(REGION, turn("s1", 1, "Hello."))
        await out.end("s1", 1)
        await bus.publish(REGION, guess("s1", 2, "I'd like a table for", 1))
        await wait_until(lambda: bool(out.chunks("s1", 2)))
        await bus.publish(REGION, TurnResumed(session="s1", turn=2, speculation=1))
        await wait_until(lambda: fake.cancelled == 1)
        stopped = len(out.chunks("s1", 2))
        await bus.publish(REGION, commit("s1", 2, "I'd like a table for four people.", 0))
        end = await out.end("s1", 2)
    assert stopped < len(guessed.split()), "the guess was generated to its end"
    assert end.text == answer and end.speculation == 0
    assert "".join(c.text for c in out.chunks("s1", 2) if c.speculation == 0) == answer
    assert fake.calls[-1][0][1:] == [
        {"role": "user", "content": "Hello."},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "I'd like a table for four people."},
    ]
    saved = (await history(bus, "s1")).turns
    assert [(r.user, reply_text(r.reply)) for r in saved] == [
        ("Hello.", answer), ("I'd like a table for four people.", answer)]
    assert (stage.speculation.started, stage.speculation.adopted,
            stage.speculation.dropped) == (1, 0, 1)


async def test_a_commit_of_other_words_replaces_the_guess(bus: Bus) -> None:
    fake = FakeLLM([FakeTurn.words("Guessed reply here.", token_delay_s=0.05),
                    FakeTurn.words("Real reply.")])
    out = await Outputs.on(bus)
    async with running(bus, LlmStage(fake, SETTINGS)):
        await bus.publish(REGION, guess("s1", 1, "Book a", 1))
        await wait_until(lambda: bool(out.chunks("s1", 1)))
        # the commit names no guess (its words were decoded anew): the guess is void
        await bus.publish(REGION, commit("s1", 1, "Book a taxi.", 0))
        end = await out.end("s1", 1)
    assert end.text == "Real reply." and end.speculation == 0
    assert fake.cancelled == 1
    saved = (await history(bus, "s1")).turns
    assert [(r.user, reply_text(r.reply)) for r in saved] == [("Book a taxi.", "Real reply.")]


async def test_barge_in_during_an_adopted_guess_cuts_it(bus: Bus) -> None:
    fake = FakeLLM([FakeTurn.words("one two three four five six seven eight nine ten",
                                   token_delay_s=0.05)])
    out = await Outputs.on(bus)
    async with running(bus, LlmStage(fake, SETTINGS)):
        await bus.publish(REGION, guess("s1", 1, "Count to ten.", 1))
        await bus.publish(REGION, commit("s1", 1, "Count to ten.", 1))
        await wait_until(lambda: len(out.chunks("s1", 1)) >= 3)
        await bus.publish(REGION, Interrupt(session="s1", turn=1, at_ns=time.time_ns()))
        await wait_until(lambda: fake.cancelled == 1)
        await asyncio.sleep(0.2)
    assert not any(isinstance(m, ReplyEnd) for m in out.turn_of("s1", 1))
    heard = "".join(c.text for c in out.chunks("s1", 1))
    assert len(heard.split()) < 10
    saved = (await history(bus, "s1")).turns
    assert [(r.user, reply_text(r.reply)) for r in saved] == [("Count to ten.", heard)]
