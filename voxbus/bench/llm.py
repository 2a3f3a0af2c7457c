"""LLM stage latency through the bus: ``python -m voxbus.bench.llm [--sessions 10 --turns 4]
[--model qwen-1.5b]``.

A real nats-server (embedded), the real worker and ``LlmStage`` on SmolLM2-135M in process (or
the model ``--model`` names: ``LLM_MODEL_NAME``'s values). For
each turn it publishes ``EndOfTurn`` and measures, from that moment:
- ``handler``: the stage starts handling it (bus + lane),
- ``first_token``: the engine's first token (inside the stage); ``engine_ttft`` is the same
  counted by the engine from the moment its thread takes the job (prefill + first sampling),
- ``first_text``: the first ``ReplyText`` arrives at a subscriber (what TTS waits for),
- ``reply``: ``ReplyEnd`` arrives (the whole reply, history saved);
plus decoding tokens/s and the prompt tokens the engine reused from its cache. ``cold`` is the first
turn of a new conversation (only the system prompt is cached), ``warm`` a later turn of the same
conversation (everything up to the new user message is cached). Writes bench/results/llm.json
(``llm-<model>.json`` for a model other than the default).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

from nats.aio.msg import Msg

from voxbus.bench.report import print_table, summary_ms, write_json
from voxbus.contracts.messages import EndOfTurn, ReplyEnd, ReplyText
from voxbus.ops.nats import EmbeddedNats
from voxbus.runtime.bus import Bus
from voxbus.runtime.worker import Worker
from voxbus.services.llm.llama_engine import LlamaCppEngine
from voxbus.services.llm.models import DEFAULT_MODEL, MODELS, model_path
from voxbus.services.llm.settings import LlmSettings
from voxbus.services.llm.stage import LlmStage, build_engine

REGION = "bench"
TARGET_WARM_FIRST_TEXT_MS = 250.0
NAMES = ("Anna", "Ben", "Chloe", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jonas", "Kate",
         "Liam")
LINES = (
    "Hi, this is {name}. Can you hear me?",
    "What time do you open tomorrow?",
    "Can I bring my dog with me?",
    "Where can I park my car?",
    "Do I need an appointment?",
    "Thanks, is there anything else I should know?",
)


class Arrivals:
    """When the first ReplyText and the ReplyEnd of each (session, turn) arrived."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.first: dict[tuple[str, int], tuple[int, str]] = {}
        self.ends: dict[tuple[str, int], tuple[int, ReplyEnd]] = {}
        self.done = asyncio.Event()

    async def on(self, raw: Msg) -> None:
        now = time.time_ns()
        msg = await self.bus.read(raw.subject, raw.data)
        key = (msg.session, msg.turn)
        if isinstance(msg, ReplyText):
            self.first.setdefault(key, (now, msg.text))
        elif isinstance(msg, ReplyEnd):
            self.ends[key] = (now, msg)
            self.done.set()


async def one_turn(
    bus: Bus, stage: LlmStage, engine: LlamaCppEngine, arrivals: Arrivals, session: str, n: int,
    line: str,
) -> dict[str, Any]:
    arrivals.done.clear()
    at = time.time_ns()
    await bus.publish(REGION, EndOfTurn(session=session, turn=n, transcript=line,
                                        speech_start_ns=at, speech_end_ns=at, at_ns=at))
    while (session, n) not in arrivals.ends:
        await asyncio.wait_for(arrivals.done.wait(), 60)
        arrivals.done.clear()
    end_ns, end = arrivals.ends[(session, n)]
    first_ns, first_text = arrivals.first.get((session, n), (end_ns, ""))
    turn = stage.recent[-1]
    gen = engine.last_stats
    assert turn.session == session and turn.turn == n and gen is not None
    decode_s = gen.total_s - (gen.first_token_s or gen.total_s)
    return {
        "kind": "cold" if n == 1 else "warm",
        "session": session,
        "turn": n,
        "handler_s": (turn.started_ns - at) / 1e9,
        "first_token_s": ((turn.first_token_ns or end_ns) - at) / 1e9,
        "engine_first_token_s": gen.first_token_s or gen.total_s,
        "first_text_s": (first_ns - at) / 1e9,
        "reply_s": (end_ns - at) / 1e9,
        "prompt_tokens": gen.prompt_tokens,
        "reused_tokens": gen.reused_tokens,
        "generated_tokens": gen.generated_tokens,
        "tokens_per_s": (gen.generated_tokens - 1) / decode_s if decode_s > 0 else None,
        "first_text": first_text,
        "reply": end.text,
    }


def summarize(rows: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    sel = [r for r in rows if r["kind"] == kind]
    rates = [r["tokens_per_s"] for r in sel if r["tokens_per_s"]]
    return {
        "kind": kind,
        "turns": len(sel),
        "handler": summary_ms([r["handler_s"] for r in sel]),
        "first_token": summary_ms([r["first_token_s"] for r in sel]),
        "engine_first_token": summary_ms([r["engine_first_token_s"] for r in sel]),
        "first_text": summary_ms([r["first_text_s"] for r in sel]),
        "reply": summary_ms([r["reply_s"] for r in sel]),
        "tokens_per_s_p50": round(statistics.median(rates), 1) if rates else None,
        "prompt_tokens_p50": statistics.median(r["prompt_tokens"] for r in sel),
        "reused_tokens_p50": statistics.median(r["reused_tokens"] for r in sel),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server = await asyncio.to_thread(EmbeddedNats().start)
    try:
        bus = await Bus.connect(server.url, regions=[REGION], partitions=4, name="bench-llm")
        await bus.provision()
        settings = LlmSettings(temperature=args.temperature, max_tokens=args.max_tokens,
                               n_threads=args.threads, n_threads_batch=args.threads_batch,
                               engines=1, model_name=args.model,
                               model_path=str(model_path(args.model)))
        engine = build_engine(settings)
        assert isinstance(engine, LlamaCppEngine)
        stage = LlmStage(engine, settings)
        worker = Worker(bus, stage)
        started = time.perf_counter()
        await worker.start()
        load_s = time.perf_counter() - started
        arrivals = Arrivals(bus)
        await bus.nc.subscribe(f"voxbus.{REGION}.*.llm.reply", cb=arrivals.on)
        rows: list[dict[str, Any]] = []
        try:
            for s in range(args.sessions):
                session = f"bench-{s}-{uuid.uuid4().hex[:6]}"
                for n in range(1, args.turns + 1):
                    line = LINES[(n - 1) % len(LINES)].format(name=NAMES[s % len(NAMES)])
                    rows.append(await one_turn(bus, stage, engine, arrivals, session, n, line))
                    await asyncio.sleep(args.gap_s)
        finally:
            await worker.stop()
            await bus.close()
    finally:
        server.stop()
    return {"load_and_warmup_s": round(load_s, 3), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voxbus.bench.llm", description=__doc__)
    parser.add_argument("--sessions", type=int, default=10, help="conversations (cold turns)")
    parser.add_argument("--turns", type=int, default=4, help="turns per conversation")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (decoding)")
    parser.add_argument("--threads-batch", type=int, default=None,
                        help="llama.cpp threads for the prompt (default: --threads)")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--gap-s", type=float, default=0.2, help="pause between turns")
    parser.add_argument("--model", choices=list(MODELS), default=DEFAULT_MODEL,
                        help="the model (LLM_MODEL_NAME); default: %(default)s")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    rows = result["rows"]
    summaries = [summarize(rows, kind) for kind in ("cold", "warm")]
    print_table(
        f"LLM stage through the bus ({MODELS[args.model].title}, {args.threads} thread(s)); "
        "ms from publishing EndOfTurn",
        [
            {
                "kind": s["kind"],
                "turns": s["turns"],
                "handler_p50": s["handler"]["p50_ms"],
                "engine_ttft_p50": s["engine_first_token"]["p50_ms"],
                "first_token_p50": s["first_token"]["p50_ms"],
                "first_text_p50": s["first_text"]["p50_ms"],
                "first_text_p95": s["first_text"]["p95_ms"],
                "reply_p50": s["reply"]["p50_ms"],
                "tok_per_s": s["tokens_per_s_p50"],
                "prompt_tok": s["prompt_tokens_p50"],
                "reused_tok": s["reused_tokens_p50"],
            }
            for s in summaries
        ],
    )
    warm = summaries[1]["first_text"]["p50_ms"]
    met = warm <= TARGET_WARM_FIRST_TEXT_MS
    print(f"\nwarm first text p50 {warm:.1f} ms: target <= {TARGET_WARM_FIRST_TEXT_MS:.0f} ms "
          f"{'met' if met else 'NOT met'}")
    write_json("llm" if args.model == DEFAULT_MODEL else f"llm-{args.model}", {
        "config": vars(args),
        "load_and_warmup_s": result["load_and_warmup_s"],
        "target_warm_first_text_p50_ms": TARGET_WARM_FIRST_TEXT_MS,
        "target_met": met,
        "summary": summaries,
        "turns": rows,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
