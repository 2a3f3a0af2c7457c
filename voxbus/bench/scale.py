"""The scaling signal on real parts: what KEDA would read while load comes and goes.

    voxbus bench scale [--sessions 3] [--step-s 20] [--hold-s 30]

One replica per stage (real models, as separate processes) on a real nats-server; callers are
added one every ``--step-s`` until ``--sessions`` talk at once (each says the fixture sentences
over and over, over the bus). Every second the benchmark reads each stage's lag the way KEDA's
``nats-jetstream`` scaler does: the server's monitoring endpoint
(``/jsz?acc=$G&consumers=true&config=true``), ``num_pending + num_ack_pending`` of each of the
stage's consumers, summed as the chart's ScaledObject sums them. At the peak it starts a second
replica of every stage and records the leases moving (partitions per replica) and the lag;
after ``--hold-s`` the load stops and it records the lag going to zero. Writes
``bench/results/scale.json`` (the time series and a summary per phase).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from voxbus.bench.report import print_table, write_json
from voxbus.dev.callers import BusCaller
from voxbus.dev.supervise import ChildProcess
from voxbus.ops.auth import ROLES
from voxbus.ops.nats import EmbeddedNats
from voxbus.ops.top import bus_view
from voxbus.runtime import logging as vlog
from voxbus.runtime.bus import Bus
from voxbus.runtime.procs import free_port
from voxbus.runtime.tasks import TaskSet

REGION = "scale"
STAGES = ("stt", "llm", "tts")
FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "speech"


def keda_lag(jsz: dict[str, Any], region: str) -> dict[str, int]:
    """Per stage: the sum over its consumers of pending + unacked, as KEDA's nats-jetstream
    scaler reads each consumer (``getMaxMsgLag``) and the ScaledObject's formula sums them."""
    lag = dict.fromkeys(STAGES, 0)
    prefix = f"VOXBUS_{region.upper().replace('-', '_')}_"
    for acc in jsz.get("account_details", []):
        for stream in acc.get("stream_detail", []):
            if not str(stream.get("name", "")).startswith(prefix):
                continue
            for c in stream.get("consumer_detail", []) or []:
                stage = str(c.get("name", "")).split("-p")[0]
                if stage in lag and ROLES[stage].consumes:
                    lag[stage] += int(c.get("num_pending", 0)) + int(c.get("num_ack_pending", 0))
    return lag


def _jsz(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


def _sentences() -> list[tuple[Path, float]]:
    items = json.loads((FIXTURES / "manifest.json").read_text())["items"]
    return [(FIXTURES / it["file"], float(it["speech_end_ms"])) for it in items]


class Run:
    def __init__(self, server: EmbeddedNats, bus: Bus) -> None:
        self.server = server
        self.bus = bus
        self.t0 = time.monotonic()
        self.samples: list[dict[str, Any]] = []
        self.phase = "ramp"
        self.sessions = 0
        self.turns = 0
        self.url = (f"http://127.0.0.1:{server.http_port}/jsz?acc=$G&consumers=true"
                    "&config=true")

    async def sample(self) -> None:
        while True:
            jsz = await asyncio.to_thread(_jsz, self.url)
            rows = await bus_view(self.bus, REGION)
            self.samples.append({
                "t_s": round(time.monotonic() - self.t0, 2), "phase": self.phase,
                "sessions": self.sessions, "turns": self.turns,
                "lag": keda_lag(jsz, REGION),
                "partitions": {r.stage: dict(sorted(r.replicas.items())) for r in rows},
            })
            await asyncio.sleep(1.0)

    async def talk(self, caller: BusCaller, offset: int, stop: asyncio.Event) -> None:
        sentences = _sentences()
        i = offset
        while not stop.is_set():
            wav, end_ms = sentences[i % len(sentences)]
            r = await caller.say(wav, end_ms, timeout_s=60)
            self.turns += 1 if not r.errors else 0
            i += 1
        await caller.hang_up()  # as the bridge does when a caller leaves


def _spawn(stage: str, url: str, name: str) -> ChildProcess:
    env = {**os.environ, "NATS_URL": url, "VOXBUS_REGIONS": REGION}
    return ChildProcess(f"{stage}-{name}", env, echo=False, module=f"voxbus.services.{stage}")


async def _run(sessions: int, step_s: float, hold_s: float) -> dict[str, Any]:
    server = await asyncio.to_thread(EmbeddedNats(http_port=free_port()).start)
    procs: list[ChildProcess] = []
    tasks = TaskSet("bench-scale")
    stop = asyncio.Event()
    callers: list[BusCaller] = []
    try:
        bus = await Bus.connect(server.url, regions=[REGION], name="bench-scale")
        await bus.provision()
        procs = [_spawn(s, server.url, "a") for s in STAGES]
        for p in procs:
            await p.start()
        await asyncio.gather(*(p.wait_ready(300) for p in procs))
        run = Run(server, bus)
        tasks.spawn(run.sample(), name="sample")
        for n in range(sessions):  # the ramp
            caller = BusCaller(bus, REGION, f"load{n}")
            await caller.subscribe()
            callers.append(caller)
            tasks.spawn(run.talk(caller, n, stop), name=f"caller-{n}")
            run.sessions = n + 1
            print(f"  {run.sessions} session(s) talking", flush=True)
            await asyncio.sleep(step_s)
        run.phase = "second replica"
        second = [_spawn(s, server.url, "b") for s in STAGES]
        procs += second
        for p in second:
            await p.start()
        print("  a second replica of every stage started", flush=True)
        await asyncio.sleep(hold_s)
        run.phase = "load stopped"
        stop.set()
        run.sessions = 0
        print("  load stopped", flush=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            if run.samples and not any(run.samples[-1]["lag"].values()):
                break
        await asyncio.sleep(2.0)
        return _summary(run)
    finally:
        stop.set()
        await tasks.close()
        for c in callers:
            with contextlib.suppress(Exception):
                await c.close()
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)
        server.stop()


def _summary(run: Run) -> dict[str, Any]:
    phases: list[dict[str, Any]] = []
    for phase in ("ramp", "second replica", "load stopped"):
        xs = [s for s in run.samples if s["phase"] == phase]
        if not xs:
            continue
        row: dict[str, Any] = {"phase": phase, "seconds": len(xs)}
        for stage in STAGES:
            lags = [s["lag"][stage] for s in xs]
            # what the HPA divides by: the replicas holding partitions at each reading
            per = [s["lag"][stage] / max(1, len(s["partitions"].get(stage, {}))) for s in xs]
            row[f"{stage}_lag_median"] = statistics.median(lags)
            row[f"{stage}_lag_max"] = max(lags)
            row[f"{stage}_per_replica_median"] = round(statistics.median(per), 1)
        last = xs[-1]["partitions"]
        row["replicas_holding"] = {s: len(last.get(s, {})) for s in STAGES}
        phases.append(row)
    end = run.samples[-1] if run.samples else {}
    return {"region": REGION, "turns": run.turns, "phases": phases,
            "lag_at_end": end.get("lag"), "partitions_at_end": end.get("partitions"),
            "samples": run.samples}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="voxbus bench scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=3)
    ap.add_argument("--step-s", type=float, default=20.0)
    ap.add_argument("--hold-s", type=float, default=30.0)
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.sessions < 1:
        ap.error("--sessions must be at least 1")
    vlog.configure("warning")
    print(f"one replica per stage, {args.sessions} session(s) added every {args.step_s:g} s, "
          f"then a second replica, then no load...", flush=True)
    result = asyncio.run(_run(args.sessions, args.step_s, args.hold_s))
    print_table("what KEDA reads: each stage's consumer lag (pending + unacked), per phase", [
        {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()}
        for r in result["phases"]])
    print(f"lag at the end: {result['lag_at_end']}; turns answered: {result['turns']}")
    write_json("scale", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
