"""The bus misbehaves under two real replicas of a stage (``tests.runtime.replica_proc``, each
frame's handling recorded on a core subject): a replica frozen for 8 s (``SIGSTOP``: a stalled
VM, a cut link), nats-server frozen for 8 s, killed and restarted on its store after 2 s, and
restarted with an empty store. Each asserts that no frame is lost, that no session is handled by
two replicas at once (the handling order of each session is one ascending run, replayed at most
from a takeover point, never interleaved), and how soon work resumes."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from tests.faults.stages import report
from tests.runtime.test_scaleout import REGION, _holders, _spawn, check_session_order
from voxbus.contracts import streams
from voxbus.contracts.messages import AudioIn
from voxbus.contracts.subjects import Kind
from voxbus.ops.nats import EmbeddedNats
from voxbus.runtime.bus import Bus
from voxbus.runtime.testing import wait_until

SESSIONS = 24


@dataclass
class Rig:
    server: EmbeddedNats
    bus: Bus
    procs: dict[str, subprocess.Popen[bytes]]
    records: list[dict[str, object]] = field(default_factory=list)
    sent: set[tuple[str, int]] = field(default_factory=set)
    seq: int = 0

    async def send_round(self) -> None:
        for s in range(SESSIONS):
            await self.bus.publish(REGION, AudioIn(
                session=f"s{s}", seq=self.seq, sample_rate_hz=16000, capture_ns=time.time_ns(),
                pcm=b"\0\0" * 160))
            self.sent.add((f"s{s}", self.seq))
        self.seq += 1

    async def talk(self, seconds: float, every_s: float = 0.1) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await self.send_round()
            await asyncio.sleep(every_s)

    async def settle(self, timeout_s: float = 30.0) -> None:
        """Until every frame sent is recorded."""

        def missing() -> set[tuple[str, int]]:
            return self.sent - {(str(r["session"]), int(str(r["seq"]))) for r in self.records}

        await wait_until(lambda: not missing(), timeout_s=timeout_s, step_s=0.1, what=lambda: (
            f"{len(missing())} frames never handled, e.g. {sorted(missing())[:5]}"))

    def check_no_split(self) -> int:
        """Every session handled by one replica at a time; returns how many sessions moved."""
        by_session: dict[str, list[int]] = defaultdict(list)
        owners: dict[str, list[str]] = defaultdict(list)
        for r in self.records:
            s, rep = str(r["session"]), str(r["replica"])
            by_session[s].append(int(str(r["seq"])))
            if not owners[s] or owners[s][-1] != rep:
                owners[s].append(rep)
        for s, seqs in by_session.items():
            try:
                check_session_order([q - min(seqs) for q in seqs])
            except AssertionError as e:
                trail = [(r["seq"], r["replica"], round(float(str(r["t"])) % 100, 2))
                         for r in self.records if r["session"] == s]
                raise AssertionError(f"{s}: {e}\n{trail}") from None
        return sum(1 for o in owners.values() if len(o) > 1)

    def first_record_after(self, t: float) -> float:
        after = [float(str(r["t"])) for r in self.records if float(str(r["t"])) >= t]
        assert after, "nothing handled after the fault"
        return min(after) - t


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    server = EmbeddedNats(store_dir=tmp_path / "nats").start()
    bus = await Bus.connect(server.url, regions=[REGION], partitions=16, name="test-faults")
    await bus.provision()
    rig = Rig(server=server, bus=bus, procs={})

    async def on_record(m: Msg) -> None:
        rig.records.append(json.loads(m.data))

    await bus.nc.subscribe("test.processed", cb=on_record)
    rig.procs = {name: _spawn(server.url, name, delay_ms=2) for name in ("A", "B")}
    try:
        for p in rig.procs.values():
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        await _until_shared(bus, {"A": 8, "B": 8})
        yield rig
    finally:
        for p in rig.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.send_signal(signal.SIGTERM)
        for p in rig.procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
            if p.stdout is not None:
                p.stdout.close()
        await bus.close(timeout_s=2)
        server.stop()


async def _until_shared(bus: Bus, want: dict[str, int], timeout_s: float = 20.0) -> None:
    holders: dict[str, int] = {}

    async def shared() -> bool:
        now = await _holders(bus)
        holders.clear()
        holders.update(now)
        return holders == want

    await wait_until(shared, timeout_s=timeout_s, step_s=0.2,
                     what=lambda: f"leases settled on {want} (last: {holders})")


async def test_a_frozen_replica_hands_over_and_acts_on_nothing_it_lost(rig: Rig) -> None:
    await rig.talk(1.0)
    a = rig.procs["A"]
    a.send_signal(signal.SIGSTOP)
    frozen_at = time.time()
    await rig.talk(8.0)  # B takes A's partitions once their leases expire
    holders = await _holders(rig.bus)
    assert holders.get("B") == 16, f"the survivor did not take over: {holders}"
    a.send_signal(signal.SIGCONT)
    await rig.talk(3.0)
    await rig.settle()
    moved = rig.check_no_split()
    assert moved > 0, "no session moved to the survivor"
    # A's sessions were not handled for at most the lease ttl and a tick or two
    gaps = _longest_gap_per_session(rig.records, since=frozen_at)
    report("replica frozen 8 s", gap_s=max(gaps.values()), sessions_moved=moved)
    assert max(gaps.values()) < streams.LEASE_TTL_S + 2.0, gaps
    await _until_shared(rig.bus, {"A": 8, "B": 8})  # A came back and rejoined


async def test_a_killed_replica_s_partitions_move_before_its_leases_expire(rig: Rig) -> None:
    """``kill -9``: the survivor sees the dead replica's lease keys go unrenewed and takes them
    once their holder would have fenced itself (``ttl - margin`` after its last renewal, on the
    survivor's clock), not when the keys expire."""
    await rig.talk(1.0)
    talking = asyncio.create_task(rig.talk(5.0))
    await asyncio.sleep(0.5)
    rig.procs["A"].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    moved_s = None
    while time.monotonic() - killed < 4.0:
        if (await _holders(rig.bus)).get("B") == 16:
            moved_s = time.monotonic() - killed
            break
        await asyncio.sleep(0.05)
    await talking
    await rig.settle()
    moved = rig.check_no_split()
    assert moved_s is not None, f"the survivor did not take over: {await _holders(rig.bus)}"
    gaps = _longest_gap_per_session(rig.records, since=time.time() - 6.0)
    report("replica killed (bus, recording stage)", gap_s=max(gaps.values()),
           partitions_moved_s=round(moved_s, 2), sessions_moved=moved)
    # ttl - margin after the last renewal, plus a tick to see it: under the ttl
    assert moved_s < streams.LEASE_TTL_S, f"partitions moved {moved_s:.2f} s after the kill"


async def test_nats_frozen_for_8s(rig: Rig) -> None:
    await rig.talk(1.0)
    assert rig.server._proc is not None
    rig.server._proc.send_signal(signal.SIGSTOP)
    talking = asyncio.create_task(rig.talk(8.0))
    await asyncio.sleep(8.0)
    rig.server._proc.send_signal(signal.SIGCONT)
    back = time.time()
    await talking
    await rig.talk(2.0)
    await rig.settle()
    rig.check_no_split()
    resumed = rig.first_record_after(back)
    report("nats frozen 8 s", gap_s=resumed, note="from nats back to work resumed")
    assert resumed < 1.0
    await _until_shared(rig.bus, {"A": 8, "B": 8})


async def test_nats_restarted_on_its_store(rig: Rig) -> None:
    await rig.talk(1.0)
    rig.server.kill()
    await asyncio.sleep(2.0)
    await asyncio.to_thread(rig.server.start)
    back = time.time()
    await rig.talk(3.0)
    await rig.settle()
    rig.check_no_split()
    resumed = rig.first_record_after(back)
    report("nats restarted after 2 s", gap_s=resumed, note="from nats back to work resumed")
    assert resumed < 1.0
    await _until_shared(rig.bus, {"A": 8, "B": 8})


async def _restart_with_an_empty_store(rig: Rig) -> None:
    """kill -9 the nats-server, delete its JetStream store, start it again."""
    rig.server.kill()
    assert rig.server.store_dir is not None
    shutil.rmtree(rig.server.store_dir / "jetstream")
    await asyncio.to_thread(rig.server.start)


async def test_what_comes_before_the_consumers_are_made_again_is_not_lost(rig: Rig) -> None:
    """A server back with an empty store: another process makes the streams again and
    publishes at once, before the workers made their consumers again. Those consumers start
    where the workers lost the bus, not at the next new message: nothing is missed."""
    await rig.talk(1.0)
    await rig.settle()
    await _restart_with_an_empty_store(rig)
    while not rig.bus.nc.is_connected:
        await asyncio.sleep(0.02)
    await rig.bus.provision()  # the streams are back before any worker noticed
    rig.sent.clear()
    rig.records.clear()
    await rig.send_round()  # published into streams no consumer reads yet
    await rig.talk(2.0)
    await rig.settle()
    rig.check_no_split()


async def test_nats_back_with_an_empty_store(rig: Rig) -> None:
    await rig.talk(1.0)
    await rig.settle()
    await _restart_with_an_empty_store(rig)
    back = time.monotonic()
    # the workers provision the streams and their consumers again (no one else does here)
    while True:
        try:
            await rig.bus.js.consumer_info(streams.stream_of(REGION, Kind.AUDIO_IN), "recorder-p0")
            break
        except Exception:  # noqa: BLE001 - not there yet
            assert time.monotonic() - back < 15, "the workers never provisioned again"
            await asyncio.sleep(0.2)
    report("nats back with an empty store", gap_s=time.monotonic() - back,
           note="from nats back to the consumers provisioned again")
    rig.sent.clear()
    rig.records.clear()
    await rig.talk(2.0)
    await rig.settle()
    rig.check_no_split()
    await _until_shared(rig.bus, {"A": 8, "B": 8})


async def test_lease_bookkeeping_makes_no_consumers(rig: Rig) -> None:
    bucket = f"KV_{streams.lease_bucket(REGION)}"
    before = (await rig.bus.js.stream_info(bucket)).state.consumer_count
    await asyncio.sleep(5.0)  # ten lease ticks of each replica
    after = (await rig.bus.js.stream_info(bucket)).state.consumer_count
    assert after == before == 0, (before, after)


def _longest_gap_per_session(records: list[dict[str, object]], *, since: float) -> dict[str, float]:
    times: dict[str, list[float]] = defaultdict(list)
    for r in records:
        times[str(r["session"])].append(float(str(r["t"])))
    gaps: dict[str, float] = {}
    for s, ts in times.items():
        ts = sorted(t for t in ts if t >= since - 1.0)
        gaps[s] = max((b - a for a, b in zip(ts, ts[1:], strict=False)), default=0.0)
    return gaps
