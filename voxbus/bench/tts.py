"""TTS stage benchmark through a real nats-server and the real worker:
``python -m voxbus.bench.tts``.

Measures, from publishing a reply's first ``ReplyText`` to receiving its first ``AudioOut``:
- replies whose first clause is short ("Sure,", "Okay, let me check."),
- replies whose long first sentence arrives in one chunk (the stage cuts its first unit),
- 1, 2 and 3 sessions starting a reply at the same moment on one worker.
Also the real-time factor (forward-pass time per second of audio, and wall time from the first
text to the last frame per second of audio) and playback stalls: frames that would have arrived
after a player that started at the first frame needed them. Replies are sent the way the LLM
stage sends them (its clause chunker), all chunks at once. The audio cache is off unless
``--cache`` (a repeated "Sure," would then cost nothing). Writes ``bench/results/tts.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from nats.aio.msg import Msg

from voxbus.bench.report import print_table, summary_ms, write_json
from voxbus.contracts.messages import AudioOut, ReplyEnd, ReplyText
from voxbus.ops.nats import EmbeddedNats
from voxbus.runtime import logging
from voxbus.runtime.bus import Bus
from voxbus.runtime.worker import Worker
from voxbus.services.tts.settings import TtsSettings
from voxbus.services.tts.stage import TtsStage

REGION = "bench"
FRAME_S = 0.02
SHORT_FIRST = (
    "Sure, I can help with that. What time works best for you?",
    "Okay, let me check. The pharmacy closes at nine tonight.",
    "Yes, that works. I have booked it for Tuesday morning.",
    "Right, one moment please. I am looking it up now.",
)
LONG_FIRST = (
    "The pharmacy on Main Street closes at nine tonight but reopens tomorrow morning at eight.",
    "Your appointment with doctor Lee has been moved from Tuesday afternoon to Thursday morning.",
    "The quickest way to get there is to take the number twelve bus from the central station.",
)
CONCURRENT = (
    "Sure, I can do that. It will take a moment.",
    "Okay, let me look. I will be right back.",
    "Yes, of course. Here is what I found.",
)


@dataclass
class Heard:
    sent: float = 0.0
    arrivals: list[float] = field(default_factory=list)
    samples: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def first_s(self) -> float:
        return self.arrivals[0] - self.sent

    @property
    def audio_s(self) -> float:
        return self.samples / 24_000

    def stall_s(self) -> float:
        """Total wait of a player that starts at the first frame and plays 20 ms per frame."""
        stall, clock = 0.0, self.arrivals[0] if self.arrivals else 0.0
        for arrival in self.arrivals:
            if arrival > clock:
                stall += arrival - clock
                clock = arrival
            clock += FRAME_S
        return stall


class Listener:
    def __init__(self) -> None:
        self.bus: Bus | None = None
        self.replies: dict[tuple[str, int], Heard] = {}

    def expect(self, session: str, turn: int) -> Heard:
        heard = self.replies[(session, turn)] = Heard()
        return heard

    async def on_audio(self, raw: Msg) -> None:
        now = time.monotonic()
        assert self.bus is not None
        msg = await self.bus.read(raw.subject, raw.data)
        if not isinstance(msg, AudioOut) or (heard := self.replies.get((msg.session, msg.turn))) \
                is None:
            return
        if msg.last:
            heard.done.set()
        else:
            heard.arrivals.append(now)
            heard.samples += len(msg.pcm) // 2


def llm_chunks(text: str) -> list[tuple[str, int, int]]:
    """The reply as the LLM stage sends it: a text delta per word (llama.cpp's tokens are about
    that size), spans contiguous."""
    out, pos = [], 0
    for i, word in enumerate(text.split(" ")):
        piece = word if i == 0 else " " + word
        out.append((piece, pos, pos + len(piece)))
        pos += len(piece)
    return out


async def send(bus: Bus, listener: Listener, session: str, turn: int, text: str,
               chunks: list[tuple[str, int, int]]) -> Heard:
    heard = listener.expect(session, turn)
    heard.sent = time.monotonic()
    for seq, (piece, start, end) in enumerate(chunks):
        await bus.publish(REGION, ReplyText(session=session, turn=turn, seq=seq, text=piece,
                                            char_start=start, char_end=end,
                                            emitted_ns=time.time_ns()))
    await bus.publish(REGION, ReplyEnd(session=session, turn=turn, text=text))
    return heard


async def wait(heards: Sequence[Heard], timeout_s: float = 60.0) -> None:
    async with asyncio.timeout(timeout_s):
        for heard in heards:
            await heard.done.wait()


def row(name: str, heards: Sequence[Heard]) -> dict[str, Any]:
    first = summary_ms([h.first_s for h in heards])
    audio = sum(h.audio_s for h in heards)
    wall = sum(h.arrivals[-1] - h.sent for h in heards if h.arrivals)
    stalls = [h.stall_s() for h in heards]
    return {
        "scenario": name, "n": first["n"], "first_audio_p50_ms": first["p50_ms"],
        "first_audio_p95_ms": first["p95_ms"], "wall_per_audio_s": round(wall / audio, 3),
        "stall_p50_ms": round(statistics.median(stalls) * 1e3, 1),
        "stall_max_ms": round(max(stalls) * 1e3, 1),
    }


async def forward_pass(stage: TtsStage, text: str) -> float:
    """The bare forward pass of a first unit, no bus: the floor under the current load."""
    started = time.monotonic()
    await asyncio.to_thread(stage.engine.synthesize, text)
    return time.monotonic() - started


def bare_row(bare: list[float], heards: list[Heard]) -> dict[str, Any]:
    """Each reply's bare forward pass of its first unit, measured just before it was sent; and
    the stage's overhead over it (bus hops, splitting, queueing, framing, publishing)."""
    first = summary_ms(bare)
    overhead = summary_ms([h.first_s - b for h, b in zip(heards, bare, strict=True)])
    return {"scenario": "  its first unit, bare forward pass", "n": first["n"],
            "first_audio_p50_ms": first["p50_ms"], "first_audio_p95_ms": first["p95_ms"],
            "overhead_p50_ms": overhead["p50_ms"], "overhead_p95_ms": overhead["p95_ms"]}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = replace(
        TtsSettings.from_env(), intra_op_threads=args.threads, spin=args.spin,
        first_words=args.first_words, cache_entries=64 if args.cache else 0,
        max_sessions=max(4, max(args.sessions)),
    )
    listener = Listener()
    load_before = os.getloadavg()[0]
    server = await asyncio.to_thread(EmbeddedNats().start)
    try:
        bus = await Bus.connect(server.url, regions=[REGION], partitions=8, name="bench-tts")
        await bus.provision()
        listener.bus = bus
        await bus.nc.subscribe(f"voxbus.{REGION}.*.audio.out", cb=listener.on_audio)
        stage = TtsStage(settings)
        started = time.monotonic()
        worker = Worker(bus, stage)
        await worker.start()
        ready_s = time.monotonic() - started
        rows: list[dict[str, Any]] = []
        try:
            await wait([await send(bus, listener, "warm", 1, SHORT_FIRST[0],
                                   llm_chunks(SHORT_FIRST[0]))])
            before = replace(stage.stats)
            short, bare = [], []
            for i in range(args.replies):
                text = SHORT_FIRST[i % len(SHORT_FIRST)]
                bare.append(await forward_pass(stage, text.split(" ")[0]))
                short.append(await send(bus, listener, f"short{i}", 1, text, llm_chunks(text)))
                await wait(short[-1:])
            rows.append(row("short first clause", short))
            rows.append(bare_row(bare, short))
            long_ = []
            for i in range(args.replies):
                text = LONG_FIRST[i % len(LONG_FIRST)]
                long_.append(await send(bus, listener, f"long{i}", 1, text,
                                        [(text, 0, len(text))]))
                await wait(long_[-1:])
            rows.append(row("long first sentence, one chunk", long_))
            stats = stage.stats
            synth_rtf = (stats.synth_s - before.synth_s) / (stats.audio_s - before.audio_s)
            for k in args.sessions:
                heards: list[Heard] = []
                for r in range(max(3, math.ceil(args.replies / k))):
                    batch = [
                        await send(bus, listener, f"c{k}x{r}s{j}", 1, CONCURRENT[j % 3],
                                   llm_chunks(CONCURRENT[j % 3]))
                        for j in range(k)
                    ]
                    await wait(batch)
                    heards += batch
                rows.append(row(f"{k} concurrent session(s)", heards))
        finally:
            await worker.stop()
            await bus.close()
    finally:
        server.stop()
    cols = list(dict.fromkeys(c for r in rows for c in r))
    rows = [{c: r.get(c, "") for c in cols} for r in rows]
    print_table(f"TTS first audio (threads={args.threads}, spin={args.spin}, "
                f"first_words={args.first_words}, cache={args.cache})", rows)
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(f"\nforward pass per second of audio (RTF): {synth_rtf:.3f}; worker ready in "
          f"{ready_s:.1f} s (model load + warm-up); 1-min load average {load[0]} -> {load[1]} "
          f"on {os.cpu_count()} cores (other jobs share them)")
    return {
        "settings": {"intra_op_threads": args.threads, "spin": args.spin,
                     "first_words": args.first_words, "cache": args.cache,
                     "ramp": list(settings.ramp), "max_unit_chars": settings.max_unit_chars},
        "synth_rtf": round(synth_rtf, 3), "ready_s": round(ready_s, 2), "load_average": load,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voxbus.bench.tts", description=__doc__)
    parser.add_argument("--replies", type=int, default=12, help="replies per scenario (>= 10)")
    parser.add_argument("--sessions", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 2, 3], help="concurrent sessions to try, e.g. 1,2,3")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--spin", action="store_true", help="let onnxruntime threads spin")
    parser.add_argument("--first-words", type=int, default=TtsSettings().first_words,
                        help="words in a first unit without punctuation (0: the engine's)")
    parser.add_argument("--cache", action="store_true", help="reuse audio of short units")
    parser.add_argument("--out", default="tts", help="results file name (bench/results/NAME)")
    args = parser.parse_args(argv)
    logging.configure(level="warning")
    result = asyncio.run(run(args))
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
