"""Does the llama.cpp engine's memory grow per reply? (Not a test: a probe for the soak's LLM
slope.) Replies to a conversation that grows and is trimmed to 24 messages, as the soak's
callers make; every 20 replies the process's RSS and the Python heap (tracemalloc) are printed.

    .venv/bin/python -m tests.llm.probe_memory [REPLIES]
"""

from __future__ import annotations

import asyncio
import sys
import time
import tracemalloc

from voxbus.services.llm.engine import ChatMessage, TextDelta
from voxbus.services.llm.llama_engine import LlamaCppEngine
from voxbus.services.llm.settings import LlmSettings

QUESTIONS = ["What time does the museum open?", "Turn left at the next traffic light.",
             "How much does this jacket cost?", "Can you book a table for four people?",
             "The meeting starts at ten in the morning.", "Is it going to rain tomorrow?"]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def main(replies: int) -> None:
    s = LlmSettings.from_env()
    engine = LlamaCppEngine(model_path=s.model_path, n_ctx=s.n_ctx, n_threads=s.n_threads,
                            max_tokens=s.max_tokens)
    await engine.warmup()
    tracemalloc.start()
    history: list[ChatMessage] = []
    started = time.monotonic()
    for i in range(replies):
        history.append({"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} ({i})"})
        text = ""
        async for delta in engine.stream(history[-24:]):
            if isinstance(delta, TextDelta):
                text += delta.text
        reply: ChatMessage = {"role": "assistant", "content": text}
        history = [*history, reply][-24:]
        if i % 20 == 0:
            heap, _peak = tracemalloc.get_traced_memory()
            print(f"reply {i:4d}  {time.monotonic() - started:6.0f} s  rss {rss_mb():7.1f} MB  "
                  f"python heap {heap / 1e6:5.2f} MB", flush=True)
    await engine.aclose()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
