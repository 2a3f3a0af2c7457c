"""Real stage workers as child processes, for the kill tests: start two replicas of a stage on a
real nats-server, wait until they share the partitions, find which one holds a session."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from nats.js.errors import KeyNotFoundError

from voxbus.contracts.messages import AnyMessage
from voxbus.contracts.streams import lease_bucket
from voxbus.contracts.subjects import partition_of
from voxbus.ops.nats import EmbeddedNats
from voxbus.runtime.bus import Bus
from voxbus.runtime.settings import BusSettings

REGION = "faults"
PARTITIONS = 16
#: Lease and ack timings for these tests (``VOXBUS_*``; the defaults when unset). A benchmark
#: can set them in the environment to compare.
TIMINGS = {k: v for k, v in os.environ.items()
           if k in ("VOXBUS_LEASE_TTL_S", "VOXBUS_ACK_WAIT_S", "VOXBUS_LEASE_TICK_S",
                    "VOXBUS_LEASE_FENCE_MARGIN_S", "VOXBUS_PULL_EXPIRES_S")}


def spawn(stage: str, url: str, log: Path, env: dict[str, str] | None = None,
          args: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    full = {**os.environ, "NATS_URL": url, "VOXBUS_REGIONS": REGION, "PYTHONUNBUFFERED": "1",
            **(env or {})}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", f"voxbus.services.{stage}", *args],
                                env=full, stdout=out, stderr=subprocess.STDOUT)


async def holders(bus: Bus, stage: str, region: str = REGION) -> dict[str, int]:
    """Partitions held per replica (read key by key: a key listing would leave a consumer)."""
    kv = await bus.kv(lease_bucket(region))
    counts: dict[str, int] = {}
    for p in range(bus.partitions):
        try:
            entry = await kv.get(f"{stage}.p{p}")
        except KeyNotFoundError:
            continue
        if entry.value:
            counts[entry.value.decode()] = counts.get(entry.value.decode(), 0) + 1
    return counts


async def owner_pid(bus: Bus, stage: str, session: str) -> int:
    """The pid of the replica holding ``session``'s partition (replica ids are
    ``<host>-<pid>-<random>``)."""
    kv = await bus.kv(lease_bucket(REGION))
    entry = await kv.get(f"{stage}.p{partition_of(session, PARTITIONS)}")
    return int((entry.value or b"").decode().rsplit("-", 2)[1])


@asynccontextmanager
async def two_replicas(
    stage: str, tmp_path: Path, env: dict[str, str] | None = None, timeout_s: float = 150.0,
    args: tuple[str, ...] = (),
) -> AsyncIterator[tuple[Bus, list[subprocess.Popen[bytes]]]]:
    server = EmbeddedNats(store_dir=tmp_path / "nats").start()
    bus = await Bus.connect(server.url, regions=[REGION], partitions=PARTITIONS,
                            name=f"test-{stage}-kill")
    env = {**TIMINGS, **(env or {})}
    await bus.provision(BusSettings.from_env(env).retention())
    logs = [tmp_path / f"{stage}{i}.log" for i in range(2)]
    procs = [spawn(stage, server.url, log, env, args) for log in logs]
    try:
        deadline = time.monotonic() + timeout_s
        while sorted((await holders(bus, stage)).values()) != [8, 8]:
            for p, log in zip(procs, logs, strict=True):
                assert p.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{stage} replicas never shared the partitions"
            await asyncio.sleep(0.5)
        yield bus, procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        await bus.close(timeout_s=2)
        server.stop()


async def stored(bus: Bus, session: str, stream: str) -> list[AnyMessage]:
    """Every message ``stream`` holds for ``session``, in order (an ordered consumer)."""
    sub = await bus.js.subscribe(f"voxbus.{REGION}.*.{session}.>", ordered_consumer=True,
                                 stream=stream)
    out: list[AnyMessage] = []
    try:
        while True:
            try:
                raw = await sub.next_msg(timeout=0.5)
                out.append(await bus.read(raw.subject, raw.data))
            except TimeoutError:
                return out
    finally:
        await sub.unsubscribe()


def report(scenario: str, *, gap_s: float, turns_lost: int = 0, duplicates: int = 0,
           **extra: object) -> None:
    """One scenario's result, for ``voxbus bench faults`` (a JSON line appended to
    ``$VOXBUS_FAULTS_REPORT`` when it is set)."""
    print(f"{scenario}: gap {gap_s:.2f}s, turns lost {turns_lost}, duplicates {duplicates}")
    path = os.environ.get("VOXBUS_FAULTS_REPORT")
    if path:
        row = {"scenario": scenario, "gap_s": round(gap_s, 3), "turns_lost": turns_lost,
               "duplicates": duplicates, **extra}
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
