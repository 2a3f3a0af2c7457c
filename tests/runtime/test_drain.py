"""SIGTERM drains a replica cleanly: what it took is finished and acked, its partitions are handed
back at once, and a successor handles the rest exactly once."""

from __future__ import annotations

import asyncio
import json
import signal
import time

from tests.runtime.test_scaleout import REGION, _spawn
from voxbus.contracts.messages import AudioIn
from voxbus.runtime.bus import Bus
from voxbus.runtime.testing import wait_until


async def test_sigterm_drains_and_hands_over(nats_url: str) -> None:
    bus = await Bus.connect(nats_url, regions=[REGION], partitions=16, name="test-drain")
    await bus.provision()
    records: list[dict[str, object]] = []

    async def on_record(m) -> None:  # type: ignore[no-untyped-def]
        records.append(json.loads(m.data))

    await bus.nc.subscribe("test.processed", cb=on_record)
    a = _spawn(nats_url, "A", delay_ms=30)
    b = None
    try:
        assert a.stdout is not None and a.stdout.readline().strip() == b"ready"
        for seq in range(60):
            await bus.publish(REGION, AudioIn(session="drainme", seq=seq, sample_rate_hz=16000,
                                              capture_ns=time.time_ns(), pcm=b"\0\0" * 160))
        while len(records) < 10:
            await asyncio.sleep(0.01)
        a.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(a.wait, 30)
        assert rc == 0
        by_a = len(records)
        t0 = time.monotonic()
        b = _spawn(nats_url, "B", delay_ms=0)
        assert b.stdout is not None and b.stdout.readline().strip() == b"ready"
        for seq in range(60, 80):
            await bus.publish(REGION, AudioIn(session="drainme", seq=seq, sample_rate_hz=16000,
                                              capture_ns=time.time_ns(), pcm=b"\0\0" * 160))
        await wait_until(lambda: len({r["seq"] for r in records}) >= 80, timeout_s=30,
                         step_s=0.05, what="all 80 frames recorded")
        handover_s = time.monotonic() - t0
        seqs = [int(str(r["seq"])) for r in records]
        assert seqs == list(range(80)), "lost, duplicated or reordered after a clean drain"
        assert {r["replica"] for r in records[:by_a]} == {"A"}
        assert {r["replica"] for r in records[by_a:]} <= {"A", "B"}
        assert records[-1]["replica"] == "B"
        assert handover_s < 4, f"successor waited {handover_s:.1f}s: leases were not handed back"
    finally:
        for p in (a, b):
            if p is not None:
                if p.poll() is None:
                    p.kill()
                p.wait()
                if p.stdout is not None:
                    p.stdout.close()
        await bus.close()
