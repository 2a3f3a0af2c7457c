"""Bus benchmark: one 20 ms audio frame through the runtime (publish into JetStream, the worker
pulls it, the pass-through stage answers, the worker publishes, a subscriber receives), p50/p99 at
1, 50 and 200 concurrent real-time sessions, beside core NATS request/reply as the floor.

    voxbus bench bus [--seconds 5] [--sessions 1,50,200]
    voxbus bench bus --regions eu,us --cluster-size 3

The stage worker runs in its own process, as in production; the load generator in this one.
With ``--cluster-size``, the same runs go first through today's single server and then through
a supercluster (``ops.supercluster``: a cluster of that many servers per region), on the first
region's streams, replicated on its servers (three replicas on three): the cost of replication
per hop, measured in one invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from voxbus.bench.report import print_table, summary_ms, write_json
from voxbus.contracts import encode, streams
from voxbus.contracts.messages import AudioIn, AudioOut
from voxbus.contracts.subjects import Kind
from voxbus.ops.nats import EmbeddedNats
from voxbus.ops.supercluster import Supercluster
from voxbus.runtime import logging as vlog
from voxbus.runtime.bus import Bus
from voxbus.runtime.procs import stop_process

REGION = "bench"
FRAME = b"\x01\x00" * 320  # 20 ms of 16 kHz mono PCM16
FLOOR_SUBJECT = "bench.floor"


async def _worker(url: str, region: str) -> None:
    from voxbus.runtime import logging as vlog
    from voxbus.runtime.echo import EchoStage
    from voxbus.runtime.worker import Worker

    vlog.configure("warning")
    bus = await Bus.connect(url, regions=[region], name="bench-worker")
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
    region = bus.regions[0]
    sent: dict[tuple[str, int], float] = {}
    lat: list[float] = []

    async def on_out(m) -> None:  # type: ignore[no-untyped-def]
        msg = await bus.read(m.subject, m.data)
        assert isinstance(msg, AudioOut)
        t0 = sent.pop((msg.session, msg.seq), None)
        if t0 is not None:
            lat.append(time.perf_counter() - t0)

    sub = await bus.nc.subscribe(f"voxbus.{region}.*.{Kind.AUDIO_OUT.value}", cb=on_out)
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
            await bus.publish(region, msg)
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


@asynccontextmanager
async def _single() -> AsyncIterator[tuple[str, str]]:
    server = await asyncio.to_thread(EmbeddedNats().start)
    try:
        yield server.url, REGION
    finally:
        server.stop()


@asynccontextmanager
async def _supercluster(regions: list[str], size: int) -> AsyncIterator[tuple[str, str]]:
    with tempfile.TemporaryDirectory(prefix="voxbus-bench-bus-") as tmp:
        cluster = Supercluster(regions, size, Path(tmp))
        await asyncio.to_thread(cluster.start)
        try:
            for r in regions[1:]:  # the other regions exist, provisioned, as they would
                other = await Bus.connect(cluster.url(r), regions=[r], name="bench-provision")
                await other.provision()
                await other.close()
            yield cluster.url(regions[0]), regions[0]
        finally:
            await asyncio.to_thread(cluster.stop)


async def _measure(url: str, region: str, sessions: list[int], seconds: float
                   ) -> list[dict[str, Any]]:
    proc: asyncio.subprocess.Process | None = None
    bus = await Bus.connect(url, regions=[region], name="bench-load")
    try:
        await bus.provision()
        info = await bus.js.stream_info(streams.audio_stream(region))
        replicas = info.config.num_replicas
        profile = os.environ.get("BENCH_PROFILE")  # write a cProfile of the worker here
        prof = ["-m", "cProfile", "-o", profile] if profile else []
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *prof, "-m", "voxbus.bench.bus", "--worker", url,
            "--worker-region", region, stdout=asyncio.subprocess.PIPE,
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
                "replicas": replicas,
                "sessions": n,
                "frames": runtime["n"],
                "runtime_p50_ms": runtime["p50_ms"],
                "runtime_p99_ms": runtime["p99_ms"],
                "floor_p50_ms": floor["p50_ms"],
                "floor_p99_ms": floor["p99_ms"],
                "overhead_p50_ms": round(runtime["p50_ms"] - floor["p50_ms"], 3),
                "overhead_p99_ms": round(runtime["p99_ms"] - floor["p99_ms"], 3),
            })
        return rows
    finally:
        await stop_process(proc, 30)
        await bus.close()


async def _run(sessions: list[int], seconds: float, regions: list[str] | None = None,
               cluster_size: int = 0) -> dict[str, Any]:
    async with _single() as (url, region):
        rows = [{"topology": "single server", **r}
                for r in await _measure(url, region, sessions, seconds)]
    if cluster_size and regions:
        async with _supercluster(regions, cluster_size) as (url, region):
            label = f"supercluster {len(regions)}x{cluster_size}, {region}"
            rows += [{"topology": label, **r}
                     for r in await _measure(url, region, sessions, seconds)]
    return {"seconds_per_level": seconds, "frame_ms": 20, "regions": regions or [],
            "cluster_size": cluster_size, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="voxbus bench bus")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--sessions", default="1,50,200")
    ap.add_argument("--regions", default="",
                    help="with --cluster-size: the supercluster's regions (the first is measured)")
    ap.add_argument("--cluster-size", type=int, default=0,
                    help="also measure on a supercluster of this many servers per region")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-region", default=REGION, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    vlog.configure("warning")
    if args.worker:
        asyncio.run(_worker(args.worker, args.worker_region))
        return 0
    regions = [r.strip() for r in args.regions.split(",") if r.strip()]
    if args.cluster_size and not regions:
        regions = ["eu", "us"]
    if not 0 <= args.cluster_size <= 9:
        print("voxbus bench bus: --cluster-size must be within 1..9", file=sys.stderr)
        return 2
    result = asyncio.run(_run([int(x) for x in args.sessions.split(",")], args.seconds,
                              regions, args.cluster_size))
    print_table("one 20 ms frame through one stage hop (ms)", result["rows"])
    print("floor = core NATS request/reply with the same payload and pacing; "
          "overhead = runtime - floor")
    write_json("bus", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
