"""``voxbus bench seal``: what sealing a session's payloads costs (``contracts.sealing``).

For each kind of message a session carries most (a caller's 20 ms frame, an agent's 20 ms
frame at 24 kHz, a final transcript, a reply's text chunk, a tool call): the time to encode it
plain, to seal it (AES-256-GCM, a fresh nonce) and encode, and to decode and open it, medians
and p95 over ``--n`` rounds; and the bytes it adds on the wire. Then the same per call-second:
a caller's 50 frames in and an agent's 50 frames out.

The voice-to-voice effect is measured by ``voxbus bench voice`` with ``VOXBUS_SEAL=0`` and
``=1`` (every process of the loop reads it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from voxbus.bench.report import print_table, write_json
from voxbus.contracts.messages import (
    AudioIn,
    AudioOut,
    Message,
    ReplyText,
    Sealed,
    ToolCall,
    Transcript,
    decode,
    encode,
)
from voxbus.contracts.sealing import KEY_BYTES, Sealer

SESSION = "bench-seal"


def _samples() -> dict[str, Message]:
    return {
        "caller frame (20 ms, 16 kHz)": AudioIn(
            session=SESSION, seq=7, sample_rate_hz=16000, capture_ns=time.time_ns(),
            pcm=os.urandom(640)),
        "agent frame (20 ms, 24 kHz)": AudioOut(
            session=SESSION, turn=3, seq=12, sample_rate_hz=24000, pcm=os.urandom(960),
            text_start=0, text_end=12, emitted_ns=time.time_ns()),
        "final transcript": Transcript(
            session=SESSION, turn=3, seq=4, is_final=True, speech_start_ns=1,
            text="I'd like to book a table for four tomorrow at seven, by the window."),
        "reply text chunk": ReplyText(
            session=SESSION, turn=3, seq=1, text="Sure, a table for four at seven. ",
            char_start=0, char_end=33, emitted_ns=time.time_ns()),
        "tool call": ToolCall(
            session=SESSION, call_id="t3-s0-r1-c0", agent="frontdesk", tool="book_table",
            arguments='{"name": "Rossi", "people": 4, "time": "19:00"}'),
    }


def _time_us(fn: Callable[[], object], n: int) -> tuple[float, float]:
    for _ in range(min(200, n)):  # warm
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t) / 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95)]


def run(n: int) -> dict[str, Any]:
    sealer = Sealer(SESSION, os.urandom(KEY_BYTES))
    rows: list[dict[str, Any]] = []
    for name, msg in _samples().items():
        plain = encode(msg)
        sealed = encode(sealer.seal(msg))
        def plain_encode(m: Message = msg) -> object:
            return encode(m)

        def seal_encode(m: Message = msg) -> object:
            return encode(sealer.seal(m))

        def plain_decode(d: bytes = plain) -> object:
            return decode(d)

        def open_sealed(d: bytes = sealed) -> object:
            box = decode(d)
            assert isinstance(box, Sealed)
            return sealer.open(box)

        enc_p50, enc_p95 = _time_us(plain_encode, n)
        seal_p50, seal_p95 = _time_us(seal_encode, n)
        dec_p50, _ = _time_us(plain_decode, n)

        open_p50, open_p95 = _time_us(open_sealed, n)
        rows.append({"payload": name, "bytes": len(plain), "added_bytes": len(sealed) - len(plain),
                     "encode_us": round(enc_p50, 2), "seal_us": round(seal_p50, 2),
                     "seal_p95_us": round(seal_p95, 2), "decode_us": round(dec_p50, 2),
                     "open_us": round(open_p50, 2), "open_p95_us": round(open_p95, 2),
                     "encode_p95_us": round(enc_p95, 2)})
    by = {r["payload"]: r for r in rows}
    caller, agent = by["caller frame (20 ms, 16 kHz)"], by["agent frame (20 ms, 24 kHz)"]
    # a call-second: 50 frames each way, each sealed once and opened once (by its one reader)
    extra_us = 50 * (caller["seal_us"] - caller["encode_us"] + caller["open_us"]
                     - caller["decode_us"] + agent["seal_us"] - agent["encode_us"]
                     + agent["open_us"] - agent["decode_us"])
    return {"rounds": n, "payloads": rows,
            "per_call_second_us": round(extra_us, 1),
            "core_share_per_call": round(extra_us / 1e6, 6)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voxbus bench seal", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20000, help="rounds per payload")
    args = p.parse_args(argv)
    result = run(args.n)
    print_table("sealing one payload (medians, microseconds)", [
        {k: r[k] for k in ("payload", "bytes", "added_bytes", "encode_us", "seal_us",
                           "seal_p95_us", "decode_us", "open_us", "open_p95_us")}
        for r in result["payloads"]])
    print(f"\nper call-second (50 frames in, 50 out, each sealed and opened once): "
          f"{result['per_call_second_us']:.0f} us more CPU "
          f"({result['core_share_per_call'] * 100:.3f} % of a core per call)")
    write_json("seal", result)
    return 0
