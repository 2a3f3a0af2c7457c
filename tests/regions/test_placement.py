"""Every stream and bucket of a region lives on that region's three servers and nowhere else;
``voxbus nats --cluster-size`` starts a supercluster and prints each region's servers; caller
audio survives its stream's leader being killed (``runtime.caller_audio``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.stages import report
from tests.regions.conftest import REGIONS, Rig, leader_of, region_bus, stream_detail
from voxbus.contracts import streams
from voxbus.contracts.messages import AudioIn
from voxbus.runtime.bus import Bus, PlacementError
from voxbus.runtime.caller_audio import CallerAudio
from voxbus.runtime.testing import stored_caller_frames


def _names(region: str) -> list[str]:
    specs = [*streams.ops_streams([region]), *streams.region_streams(region)]
    return [s.name for s in specs] + [f"KV_{b.bucket}" for b in streams.region_buckets(region)]


async def test_a_region_s_streams_and_buckets_live_on_its_three_servers(rig: Rig) -> None:
    buses = [await region_bus(rig.cluster, r) for r in REGIONS]
    try:
        for bus, region in zip(buses, REGIONS, strict=True):
            for name in _names(region):
                held = {m.name: stream_detail(m, name) for m in rig.cluster.members}
                where = sorted(n for n, d in held.items() if d)
                assert where == [f"{region}-{i}" for i in (1, 2, 3)], (name, where)
                config = (await bus.js.stream_info(name)).config
                assert config.num_replicas == 3, name
                assert config.placement is not None, name
                assert config.placement.tags == [f"region:{region}"], name
    finally:
        for bus in buses:
            await bus.close()


async def test_caller_audio_outlives_its_stream_leader_killed(rig: Rig) -> None:
    """The audio stream's leader is killed while a caller talks: the stream stores nothing
    until another is elected (NATS raft: 4-9 s); every frame is still stored, once, in order."""
    bus = await region_bus(rig.cluster, "eu", "caller")
    stream = streams.audio_stream("eu")
    audio = await CallerAudio(bus, "eu", name="killtest").start()
    leader = leader_of(rig.cluster.member("eu-1"), stream)
    victim = rig.cluster.member(leader)
    try:
        frames = 0
        start = time.monotonic()
        while time.monotonic() - start < 12.0:
            if frames == 50:
                victim.server.kill()
            await audio.send(AudioIn(session="killtest", seq=frames, sample_rate_hz=16000,
                                     capture_ns=time.time_ns(), pcm=b"\1\0" * 320))
            frames += 1
            await asyncio.sleep(max(0.0, start + frames * 0.02 - time.monotonic()))
        await audio.flush(20.0)
        assert audio.pending == 0, f"{audio.pending} frames never stored"
        assert audio.recoveries >= 1 and audio.dropped == 0
        seqs = await stored_caller_frames(bus, "eu", "killtest")
        assert seqs == list(range(frames)), f"stored {len(seqs)} of {frames}, out of order?"
        new_leader = leader_of(rig.cluster.member("eu-1" if leader != "eu-1" else "eu-2"),
                               stream)
        report("caller audio, stream leader killed", gap_s=audio.last_outage_s,
               frames=frames, resent=audio.resent, new_leader=new_leader,
               note="from the first unstored frame to the backlog through")
    finally:
        await audio.close()
        await bus.close()
        await asyncio.to_thread(rig.cluster.start_member, victim)  # back, and caught up


def test_voxbus_nats_starts_a_supercluster_and_prints_each_region(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxbus.cli", "nats", "--regions", "eu,us", "--cluster-size",
         "1", "--store", str(tmp_path / "nats"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in REGIONS]
        assert [ln.split()[0] for ln in lines] == ["VOXBUS_REGION=eu", "VOXBUS_REGION=us"], lines
        urls = dict(ln.split()[1].split("=", 1) for ln in lines)
        assert len(urls) == 1 and all(u.startswith("nats://127.0.0.1:") for u in urls.values())
        for region in REGIONS:
            assert (tmp_path / "nats" / f"{region}-1" / "jetstream").is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.fast
def test_voxbus_nats_refuses_a_bad_cluster_size(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "voxbus.cli", "nats", "--regions", "eu", "--cluster-size", "10",
         "--store", str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "cluster-size must be within 1..9" in out.stderr


async def test_a_region_without_servers_is_refused_in_one_line(rig: Rig) -> None:
    """Provisioning region ``ap`` on a supercluster with no server tagged ``region:ap``: the
    streams are not put anywhere else; ``voxbus provision`` says why in one line."""
    bus = await Bus.connect(rig.cluster.url("eu"), regions=["ap"], name="nowhere")
    try:
        with pytest.raises(PlacementError, match="tagged 'region:ap'"):
            await bus.provision()
    finally:
        await bus.close()
    env = {**os.environ, "NATS_URL": rig.cluster.url("eu"), "VOXBUS_REGION": "ap"}
    out = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "voxbus.cli", "provision"], env=env, capture_output=True,
        text=True, timeout=60)
    assert out.returncode == 2 and "region:ap" in out.stderr
    assert "Traceback" not in out.stderr and out.stderr.strip().count("\n") == 0, out.stderr
