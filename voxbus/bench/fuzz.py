"""``voxbus bench fuzz``: hostile input at the stage workers of a real voice loop, and what it
does to their memory.

Publishes ``--messages`` messages at the loop's region (nats-server, STT, LLM and TTS workers
as child processes), a mix of what a misbehaving client or an attacker with room access sends:
valid caller frames of random noise for thousands of sessions (one frame each, or a few), odd
sample rates and stereo, bytes that are no message, messages of the wrong kind for their
subject, sealed messages no key opens, oversized text, sessions started and ended. Every
``--sample`` messages it reads each worker's RSS; after the fuzz it waits ``--settle`` seconds
(sessions close when idle) and reads it again. A worker whose RSS did not come back within 10 %
of its level after the first ``--warm`` messages has something growing.

Not a test: it prints the numbers and writes ``bench/results/fuzz.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from voxbus.bench.report import print_table, rss_mb, write_json
from voxbus.contracts.messages import (
    AudioIn,
    EndOfTurn,
    Sealed,
    SessionEnded,
    SessionStarted,
    encode,
)
from voxbus.contracts.subjects import Kind, subject
from voxbus.dev.loop import VoiceLoop
from voxbus.runtime import logging as vlog

REGION = "fuzz"


def noise_frames(rng: random.Random) -> list[bytes]:
    """16 frames of noise at random levels (silence to clipping), each long enough for any
    rate the fuzz sends."""
    return [_noise(48000 * 2 // 50, rng) for _ in range(16)]


def _noise(n_samples: int, rng: random.Random) -> bytes:
    amp = rng.choice([0, 50, 3000, 30000])
    values = (max(-32768, min(32767, int(rng.gauss(0, amp)))) if amp else 0
              for _ in range(n_samples))
    return b"".join(v.to_bytes(2, "little", signed=True) for v in values)


def hostile_message(i: int, rng: random.Random, pcm: list[bytes],
                    region: str = REGION) -> tuple[str, bytes]:
    """One hostile (or merely odd) message: its subject and bytes."""
    session = f"z{rng.randrange(5000)}"
    kind = rng.random()
    if kind < 0.45:  # a caller frame of noise, for one of thousands of sessions
        rate, ch = rng.choice([(16000, 1), (16000, 1), (48000, 1), (48000, 2), (8000, 1),
                               (44100, 1)])
        frame = rng.choice(pcm)[: rate * ch * 2 // 50]
        msg = AudioIn(session=session, seq=rng.randrange(50), sample_rate_hz=rate, channels=ch,
                      capture_ns=time.time_ns(), pcm=frame)
        return subject(region, session, Kind.AUDIO_IN), encode(msg)
    if kind < 0.60:  # no message at all
        return subject(region, session, Kind.AUDIO_IN), os.urandom(rng.randrange(1, 2000))
    if kind < 0.70:  # a message of the wrong kind for its subject
        eot = EndOfTurn(session=session, turn=1, transcript="x" * rng.randrange(8000),
                        speech_start_ns=1, speech_end_ns=2)
        return subject(region, session, Kind.AUDIO_IN), encode(eot)
    if kind < 0.80:  # sealed, and no key opens it
        sealed = Sealed(session=session, turn=0, kind="audio.in", seq=i,
                        box=os.urandom(rng.randrange(28, 4000)))
        return subject(region, session, Kind.AUDIO_IN), encode(sealed)
    if kind < 0.90:  # a valid shape with fields out of range
        bad = msgspec.msgpack.encode({"type": "audio.in", "session": session, "seq": -5,
                                      "sample_rate_hz": 7, "capture_ns": 0, "pcm": b"\0" * 99})
        return subject(region, session, Kind.AUDIO_IN), bad
    start = rng.random() < 0.5
    ctl = (SessionStarted(session=session, at_ns=time.time_ns()) if start
           else SessionEnded(session=session, reason="fuzz", at_ns=time.time_ns()))
    return subject(region, session, Kind.SESSION), encode(ctl)


async def run(messages: int, sample: int, warm: int, settle_s: float, rate: float,
              seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    pcm = noise_frames(rng)
    loop = VoiceLoop(region=REGION, echo=False)
    await loop.start()
    assert loop.bus is not None
    nc = loop.bus.nc
    samples: list[dict[str, Any]] = []
    started = time.monotonic()

    def read(sent: int) -> None:
        row: dict[str, Any] = {"sent": sent, "t_s": round(time.monotonic() - started, 1)}
        for child in loop.stages:
            assert child.proc is not None
            row[f"{child.name}_rss_mb"] = round(rss_mb(child.proc.pid), 1)
        samples.append(row)
        print(row, flush=True)

    try:
        read(0)
        for i in range(1, messages + 1):
            subj, data = hostile_message(i, rng, pcm)
            await nc.publish(subj, data)
            if i % 200 == 0:
                await nc.flush()
                await asyncio.sleep(200 / rate)
            if i % sample == 0:
                read(i)
        for _ in range(int(settle_s // 10)):
            await asyncio.sleep(10)
            read(messages)
    finally:
        await loop.stop()
    warm_row = min(samples, key=lambda r: abs(r["sent"] - warm))
    last = samples[-1]
    growth = {k.removesuffix("_rss_mb"): round(last[k] - warm_row[k], 1)
              for k in last if k.endswith("_rss_mb")}
    flat = {k: abs(v) <= 0.10 * warm_row[f"{k}_rss_mb"] for k, v in growth.items()}
    return {"messages": messages, "rate_per_s": rate, "seed": seed, "samples": samples,
            "warm_at": warm_row["sent"], "growth_after_warm_mb": growth,
            "flat_within_10pct": flat}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voxbus bench fuzz", description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--rate", type=float, default=500.0, help="messages a second")
    p.add_argument("--sample", type=int, default=2000, help="read RSS every N messages")
    p.add_argument("--warm", type=int, default=4000, help="RSS after this many is the base")
    p.add_argument("--settle", type=float, default=90.0, help="seconds after the fuzz")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    vlog.configure("warning")
    result = asyncio.run(run(args.messages, args.sample, args.warm, args.settle, args.rate,
                             args.seed))
    print_table("RSS growth after warm-up (MB)", [
        {"worker": k, "growth_mb": v, "flat": result["flat_within_10pct"][k]}
        for k, v in result["growth_after_warm_mb"].items()])
    write_json("fuzz", result)
    return 0
