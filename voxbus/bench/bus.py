"""Bus benchmark: one 20 ms audio frame through the runtime (publish into JetStream, the worker
pulls it, the pass-through stage answers, the worker publishes, a subscriber receives), p50/p99 at
1, 50 and 200 concurrent real-time sessions, beside core NATS request/reply as the floor.

    voxbus bench bus [--seconds 5] [--sessions 1,50,200]

The stage worker runs in its own process, as in production; the load generator in this one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import time
from typing import Any

from voxbus.bench.report import print_table, summary_ms, write_json
from voxbus.contracts import decode, encode
from voxbus.contracts.messages import AudioIn, AudioOut
from voxbus.contracts.subjects import Kind
from voxbus.ops.nats import EmbeddedNats
from voxbus.runtime import logging as vlog
from voxbus.runtime.bus import Bus
from voxbus.runtime.procs import stop_process

REGION = "bench"
FRAME = b"\x01\x00" * 320  # 20 ms of 16 kHz mono PCM16
FLOOR_SUBJECT = "bench.floor"


async def _worker(url: str) -> None:
    from voxbus.runtime import logging as vlog
    from voxbus.runtime.echo import EchoStage
    from voxbus.runtime.worker import Worker

    vlog.configure("warning")
    bus = await Bus.connect(url, regions=[REGION], name="bench-worker")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def floor(m) -> None:  # type: ignore[no-untyped-def]
        await m.respond(m.data)

    await bus.nc.subscribe(FLOOR_SUBJECT, cb=floor)
    worker = Worker(bus, EchoStage())
    await worker.start()
    print("ready", flush=True)
    await stop.wait()
    await worker.stop()
    await bus.close()


async def _session_load(bus: Bus, sessions: int, seconds: float) -> list[float]:
    sent: dict[tuple[str, int], float] = {}
    lat: list[float] = []

    async def on_out(m) -> None:  # type: ignore[no-untyped-def]
        msg = decode(m.data)
        assert isinstance(msg, AudioOut)
        t0 = sent.pop((msg.session, msg.seq), None)
        if t0 is not None:
            lat.append(time.perf_counter() - t0)

    sub = await bus.nc.subscribe(f"voxbus.{REGION}.*.{Kind.AUDIO_OUT.value}", cb=on_out)
    run = f"{os.getpid()}{random.randrange(1 << 30):x}"

    async def caller(i: int) -> None:
        session = f"b{run}-{i}"
        await asyncio.sleep(random.random() * 0.02)
        start = time.perf_counter()
        seq = 0
        while time.perf_counter() - start < seconds:
            msg = AudioIn(session=session, seq=seq, sample_rate_hz=16000,
                          capture_ns=time.time_ns(), pcm=FRAME)
            sent[(session, seq)] = time.perf_counter()
            await bus.publish(REGION, msg)
            seq += 1
            await asyncio.sleep(max(0.0, start + seq * 0.02 - time.perf_counter()))

    await asyncio.gather(*(caller(i) for i in range(sessions)))
    await asyncio.sleep(0.5)
    await sub.unsubscribe()
    return lat


async def _floor_load(bus: Bus, sessions: int, seconds: float) -> list[float]:
    lat: list[float] = []
    payload = encode(AudioIn(session="floor", seq=0, sample_rate_hz=16000, capture_ns=0,
                             pcm=FRAME))

    async def caller() -> None:
        await asyncio.sleep(random.random() * 0.02)
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            await bus.nc.request(FLOOR_SUBJECT, payload, timeout=5)
            lat.append(time.perf_counter() - t0)
            n += 1
            await asyncio.sleep(max(0.0, start + n * 0.02 - time.perf_counter()))

    await asyncio.gather(*(caller() for _ in range(sessions)))
    return lat


async def _run(sessions: list[int], seconds: float) -> dict[str, Any]:
    server = await asyncio.to_thread(EmbeddedNats().start)
    proc: asyncio.subprocess.Process | None = None
    try:
        bus = await Bus.connect(server.url, regions=[REGION], name="bench-load")
        await bus.provision()
        profile = os.environ.get("BENCH_PROFILE")  # write a cProfile of the worker here
        prof = ["-m", "cProfile", "-o", profile] if profile else []
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *prof, "-m", "voxbus.bench.bus", "--worker", server.url,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        if (await proc.stdout.readline()).strip() != b"ready":
            raise RuntimeError("bench worker did not start")
        await _session_load(bus, 1, 1.0)  # warm-up: consumers, leases, lanes
        rows: list[dict[str, Any]] = []
        for n in sessions:
            runtime = summary_ms(await _session_load(bus, n, seconds))
            floor = summary_ms(await _floor_load(bus, n, seconds))
            rows.append({
                "sessions": n,
                "frames": runtime["n"],
                "runtime_p50_ms": runtime["p50_ms"],
                "runtime_p99_ms": runtime["p99_ms"],
                "floor_p50_ms": floor["p50_ms"],
                "floor_p99_ms": floor["p99_ms"],
                "overhead_p50_ms": round(runtime["p50_ms"] - floor["p50_ms"], 3),
                "overhead_p99_ms": round(runtime["p99_ms"] - floor["p99_ms"], 3),
            })
        await bus.close()
        return {"seconds_per_level": seconds, "frame_ms": 20, "rows": rows}
    finally:
        await stop_process(proc, 30)
        server.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="voxbus bench bus")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--sessions", default="1,50,200")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    vlog.configure("warning")
    if args.worker:
        asyncio.run(_worker(args.worker))
        return 0
    result = asyncio.run(_run([int(x) for x in args.sessions.split(",")], args.seconds))
    print_table("one 20 ms frame through one stage hop (ms)", result["rows"])
    print("floor = core NATS request/reply with the same payload and pacing; "
          "overhead = runtime - floor")
    write_json("bus", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
