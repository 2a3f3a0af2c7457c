"""Soak: callers talk continuously through the bus to one replica of each stage (real models)
for ``--minutes``; every 10 s each worker's resident memory and the server's consumers are
recorded. After a warm-up (the first fifth) both should stay flat: the slope is reported.

    voxbus bench soak [--minutes 20] [--callers 2] [--fuzz RATE]

Writes ``bench/results/soak.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

from voxbus.bench.fuzz import hostile_message, noise_frames
from voxbus.bench.report import print_table, rss_mb, write_json
from voxbus.bench.voice import _fixtures
from voxbus.dev.loop import VoiceLoop
from voxbus.runtime import logging as vlog
from voxbus.runtime.bus import Bus

SAMPLE_S = 10.0


async def _consumers(bus: Bus) -> int:
    total = 0
    for info in await bus.js.streams_info():
        total += info.state.consumer_count
    return total


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    return 0.0 if var == 0 else sum((t - mx) * (v - my) for t, v in points) / var * 3600


async def _talk(loop: VoiceLoop, session: str, until: float, turns: list[int]) -> None:
    fixtures = _fixtures("speech")
    caller = await loop.caller(session)
    i = 0
    try:
        while time.monotonic() < until:
            wav, end_ms = fixtures[i % len(fixtures)]
            await caller.say(wav, end_ms, timeout_s=30)
            turns[0] += 1
            i += 1
    finally:
        await caller.close()


async def _fuzz(loop: VoiceLoop, until: float, rate: float, sent: list[int]) -> None:
    """Hostile input on the side (``bench.fuzz``), ``rate`` messages a second."""
    assert loop.bus is not None
    rng = random.Random(11)
    pcm = noise_frames(rng)
    while time.monotonic() < until:
        for _ in range(max(1, int(rate / 10))):
            sent[0] += 1
            subj, data = hostile_message(sent[0], rng, pcm, loop.region)
            await loop.bus.nc.publish(subj, data)
        await asyncio.sleep(0.1)


async def run(minutes: float, callers: int, fuzz_rate: float = 0.0) -> dict[str, Any]:
    loop = VoiceLoop(region="soak", echo=False)
    await loop.start()
    assert loop.bus is not None
    samples: list[dict[str, Any]] = []
    turns, fuzzed = [0], [0]
    start = time.monotonic()
    until = start + minutes * 60
    try:
        async with asyncio.TaskGroup() as tg:
            for c in range(callers):
                tg.create_task(_talk(loop, f"soak{c}", until, turns))
            if fuzz_rate:
                tg.create_task(_fuzz(loop, until, fuzz_rate, fuzzed))
            while time.monotonic() < until:
                row: dict[str, Any] = {"t_s": round(time.monotonic() - start, 1),
                                       "turns": turns[0], "fuzzed": fuzzed[0],
                                       "consumers": await _consumers(loop.bus)}
                for child in loop.stages:
                    assert child.proc is not None
                    row[f"{child.name}_rss_mb"] = round(rss_mb(child.proc.pid), 1)
                samples.append(row)
                print(row, flush=True)
                await asyncio.sleep(SAMPLE_S)
    finally:
        await loop.stop()
    warm = [s for s in samples if s["t_s"] >= minutes * 60 / 5]
    slopes = {k: round(slope_per_hour([(s["t_s"], s[k]) for s in warm]), 2)
              for k in samples[0] if k.endswith("_rss_mb") or k == "consumers"}
    return {"minutes": minutes, "callers": callers, "turns": turns[0],
            "fuzz_rate_per_s": fuzz_rate, "fuzzed": fuzzed[0], "samples": samples,
            "slope_per_hour_after_warmup": slopes}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voxbus bench soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--callers", type=int, default=2)
    p.add_argument("--fuzz", type=float, default=0.0,
                   help="hostile messages a second on the side (voxbus bench fuzz's mix)")
    args = p.parse_args(argv)
    vlog.configure("warning")
    result = asyncio.run(run(args.minutes, args.callers, args.fuzz))
    print_table("slope after warm-up (per hour)", [
        {"series": k, "slope_per_hour": v} for k, v in
        result["slope_per_hour_after_warmup"].items()])
    write_json("soak", result)
    return 0
