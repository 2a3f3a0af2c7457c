"""Two replicas share a stage's work on a real nats-server; one is killed mid-run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict

from tests.faults.stages import holders
from voxbus.contracts.messages import AudioIn
from voxbus.runtime.bus import Bus
from voxbus.runtime.testing import wait_until

REGION = "scale"
SESSIONS = 60
PER_SESSION = 30


def _spawn(url: str, name: str, delay_ms: int = 2) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.runtime.replica_proc", url, REGION, name, str(delay_ms)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def _holders(bus: Bus, stage: str = "recorder") -> dict[str, int]:
    return await holders(bus, stage, REGION)


def check_session_order(seqs: list[int]) -> int:
    """Processing order of one session: contiguous ascending runs, each starting no later than
    one past the highest seq seen (a replay after a failover, never a gap). Returns the number of
    replays."""
    replays, high = 0, -1
    prev = None
    for s in seqs:
        if prev is not None and s != prev + 1:
            assert s <= prev, f"gap or reorder: {prev} then {s} in {seqs}"
            replays += 1
        assert s <= high + 1, f"seq {s} handled before {high + 1}: {seqs}"
        high = max(high, s)
        prev = s
    return replays


async def test_two_replicas_share_work_and_survive_a_kill(nats_url: str) -> None:
    bus = await Bus.connect(nats_url, regions=[REGION], partitions=16, name="test-scale")
    await bus.provision()
    records: list[dict[str, object]] = []

    async def on_record(m):  # type: ignore[no-untyped-def]
        records.append(json.loads(m.data))

    await bus.nc.subscribe("test.processed", cb=on_record)
    a, b = _spawn(nats_url, "A"), _spawn(nats_url, "B")
    procs = [a, b]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == b"ready"
        holders: dict[str, int] = {}

        async def shared() -> bool:  # the two replicas settle on 8 partitions each
            nonlocal holders
            holders = await _holders(bus)
            return holders == {"A": 8, "B": 8}

        await wait_until(shared, timeout_s=15, step_s=0.2, what=lambda: f"8 each ({holders})")

        total = SESSIONS * PER_SESSION
        killed_at = None
        for seq in range(PER_SESSION):
            for s in range(SESSIONS):
                await bus.publish(REGION, AudioIn(session=f"sess{s}", seq=seq, sample_rate_hz=16000,
                                                  capture_ns=time.time_ns(), pcm=b"\0\0" * 160))
            await asyncio.sleep(0.05)
            if killed_at is None and len(records) >= total * 0.3:
                a.send_signal(signal.SIGKILL)
                killed_at = len(records)
        assert killed_at is not None, "replica A was never killed mid-run"

        def done() -> set[tuple[object, object]]:
            return {(r["session"], r["seq"]) for r in records}

        await wait_until(lambda: len(done()) == total, timeout_s=60, step_s=0.2,
                         what=lambda: f"{total - len(done())} messages never processed")

        by_session: dict[str, list[int]] = defaultdict(list)
        replicas: dict[str, list[str]] = defaultdict(list)
        for r in records:
            by_session[str(r["session"])].append(int(str(r["seq"])))
            rep = str(r["replica"])
            if not replicas[str(r["session"])] or replicas[str(r["session"])][-1] != rep:
                replicas[str(r["session"])].append(rep)
        before_kill = {str(r["replica"]) for r in records[:killed_at]}
        assert before_kill == {"A", "B"}, "both replicas were busy before the kill"
        replays = 0
        for session, seqs in by_session.items():
            replays += check_session_order(seqs)
            assert replicas[session] in (["A"], ["B"], ["A", "B"]), (session, replicas[session])
        moved = sum(1 for r in replicas.values() if r == ["A", "B"])
        assert moved > 0, "no session moved from the killed replica"
        dupes = len(records) - total
        print(f"records={len(records)} duplicates={dupes} replays={replays} moved={moved}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
            if p.stdout is not None:
                p.stdout.close()
        await bus.close()
