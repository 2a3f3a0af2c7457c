"""LLM engine latency benchmark (not a test): ``python -m tests.llm.bench_llm [--server]``.

Prints JSON: load time, cold TTFT on a ~200-token prompt, warm TTFT (prefix reused), decode
tokens/s, for n_threads 1 and 2 and several prompt chunk sizes; with ``--server``, the same through
``llama_cpp.server`` and OpenAICompatEngine. Medians of ``--reps`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from typing import Any

import httpx

from tests.llm.test_llama_engine import LONG_SYSTEM
from voxbus.services.llm.engine import ChatMessage, LLMEngine, TextDelta, assistant_message
from voxbus.services.llm.llama_engine import LlamaCppEngine, default_model_path

STORY = "Tell me a long story about a brave dragon and a little girl."


def system_variant(i: int) -> ChatMessage:
    """The long system prompt with a different first token, so nothing is reused."""
    return {"role": "system", "content": f"Session {i}. {LONG_SYSTEM['content']}"}


async def timed(engine: LLMEngine, messages: list[ChatMessage]) -> tuple[float, float, int, str]:
    """(ttft_s, total_s, text deltas, text)."""
    started = time.perf_counter()
    first: float | None = None
    pieces: list[str] = []
    async for delta in engine.stream(messages):
        if isinstance(delta, TextDelta):
            if first is None:
                first = time.perf_counter() - started
            pieces.append(delta.text)
    return first or 0.0, time.perf_counter() - started, len(pieces), "".join(pieces)


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1e3, 1)


async def bench_engine(engine: LLMEngine, reps: int, offset: int) -> dict[str, Any]:
    cold: list[float] = []
    warm: list[float] = []
    rates: list[float] = []
    for i in range(reps):
        history: list[ChatMessage] = [
            system_variant(offset + i),
            {"role": "user", "content": "When do you open?"},
        ]
        ttft, _, _, reply = await timed(engine, history)
        cold.append(ttft)
        history += [assistant_message(reply), {"role": "user", "content": "And on Saturday?"}]
        ttft, _, _, _ = await timed(engine, history)
        warm.append(ttft)
        story: list[ChatMessage] = [system_variant(offset + i), {"role": "user", "content": STORY}]
        ttft, total, n, _ = await timed(engine, story)
        if n > 1:
            rates.append((n - 1) / (total - ttft))
    return {
        "cold_ttft_ms": median_ms(cold),
        "warm_ttft_ms": median_ms(warm),
        "decode_tokens_per_s": round(statistics.median(rates), 1) if rates else None,
    }


async def in_process(reps: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    offset = 0
    for threads in (1, 2):
        for chunk in (512, 32, 16):
            engine = LlamaCppEngine(
                n_threads=threads, prompt_chunk_tokens=chunk, temperature=0.0, max_tokens=128
            )
            await engine.warmup()
            row: dict[str, Any] = {
                "engine": "in-process",
                "n_threads": threads,
                "prompt_chunk_tokens": chunk,
                "load_ms": round((engine.load_s or 0) * 1e3, 1),
            }
            row |= await bench_engine(engine, reps, offset)
            stats = engine.last_stats
            row["cold_prompt_tokens"] = stats.prompt_tokens if stats else None
            offset += reps
            await engine.aclose()
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    return rows


async def through_server(reps: int, threads: int) -> dict[str, Any]:
    from voxbus.services.llm.openai_engine import OpenAICompatEngine

    port = 18500 + threads
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path()),
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
           "--n_threads", str(threads), "--n_threads_batch", str(threads)]  # fmt: skip
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            while True:
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/v1/models")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
        ready_s = time.perf_counter() - started
        engine = OpenAICompatEngine(
            base_url=f"http://127.0.0.1:{port}", temperature=0.0, max_tokens=128
        )
        await engine.warmup()
        row: dict[str, Any] = {
            "engine": "llama_cpp.server",
            "n_threads": threads,
            "server_ready_ms": round(ready_s * 1e3, 1),
        }
        row |= await bench_engine(engine, reps, 1000 + threads * reps)
        await engine.aclose()
        print(json.dumps(row), file=sys.stderr)
        return row
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=10)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--server", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows = await in_process(args.reps)
    if args.server:
        rows += [await through_server(args.reps, 1), await through_server(args.reps, 2)]
    print(
        json.dumps(
            {"loadavg_before": load_before, "loadavg_after": os.getloadavg(), "rows": rows},
            indent=1,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
