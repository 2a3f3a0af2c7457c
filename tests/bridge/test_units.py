"""Bridge logic that needs no LiveKit server (runs everywhere)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any, cast

import numpy as np
import pytest
from livekit import rtc

from voxbus.contracts.control import dispatch_subject
from voxbus.contracts.messages import SESSION_PATTERN
from voxbus.contracts.streams import ops_streams, region_streams
from voxbus.dev import netns
from voxbus.dev.livekit_server import LiveKitConfig
from voxbus.ops.auth import permissions
from voxbus.runtime.settings import SettingsError
from voxbus.services.bridge.audio import AgentAudio, AgentFrame, FrameBatcher, PlayoutLedger, rms
from voxbus.services.bridge.playout import Playout
from voxbus.services.bridge.session import session_id_for, session_key
from voxbus.services.bridge.settings import BridgeSettings

pytestmark = pytest.mark.fast


def nats_match(pattern: str, subj: str) -> bool:
    p, s = pattern.split("."), subj.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


def test_session_ids_are_opaque_subject_tokens() -> None:
    key = session_key("", "the api secret")
    ids = {
        session_id_for(key, "room", "alice", "PA_1"),
        session_id_for(key, "room", "alice", "PA_2"),
        session_id_for(key, "room.with dots", "+441632960961", "PA_1"),
        session_id_for(key, "r" * 300, "ü" * 100, "PA_3"),
        session_id_for(key, "", "", ""),
    }
    assert len(ids) == 5
    assert all(re.match(SESSION_PATTERN, i) for i in ids)
    one = session_id_for(key, "room", "alice", "PA_1")
    assert one == session_id_for(key, "room", "alice", "PA_1")
    # nothing of the room or the caller in it, and another key gives another id
    phone = session_id_for(key, "support-line", "+441632960961", "PA_9")
    assert "support" not in phone and "4416" not in phone and "alice" not in one
    assert session_id_for(session_key("", "another secret"), "room", "alice", "PA_1") != one
    assert session_id_for(session_key("explicit", "the api secret"), "room", "alice", "PA_1") != one


def test_batcher_cuts_20ms_frames() -> None:
    b = FrameBatcher(320)
    out = [f for _ in range(5) for f in b.push(bytes(320))]  # five 10 ms chunks at 16 kHz
    assert [len(f) for f in out] == [640, 640]
    assert len(b) == 320


def test_agent_audio_is_one_stream_per_session() -> None:
    """Frames of another rate or layout come out mono at the track's rate, as one resampled
    stream: the frames of a reply add up to its length once the last one flushes."""
    audio = AgentAudio(24_000)
    stereo48 = np.stack([np.full(960, 1000), np.full(960, 3000)], axis=1).astype("<i2").tobytes()
    out = b"".join(audio.push(stereo48, rate=48_000, channels=2) for _ in range(10))
    out += audio.push(b"", rate=48_000, channels=2, last=True)
    mono24 = np.frombuffer(out, dtype="<i2")
    assert len(mono24) == 4800 and abs(int(np.median(mono24)) - 2000) <= 1
    up = b"".join(audio.push(bytes(640), rate=16_000, channels=1) for _ in range(5))
    up += audio.push(b"", rate=16_000, channels=1, last=True)
    assert len(up) == 5 * 960
    same = np.arange(480, dtype="<i2").tobytes()
    assert audio.push(same, rate=24_000, channels=1) == same
    with pytest.raises(ValueError):
        audio.push(b"\0" * 3, rate=24_000, channels=1)
    assert rms(np.full(10, 100, "<i2").tobytes()) == pytest.approx(100)


def frame(i: int, turn: int = 1, session: str = "s") -> AgentFrame:
    return AgentFrame(session=session, turn=turn, seq=i, pcm=bytes(960), duration_s=0.02,
                      text_end=i + 1)


def test_ledger_schedules_back_to_back() -> None:
    led = PlayoutLedger()
    for i in range(5):
        led.captured(frame(i), at=10.0)
    assert led.queued_s(10.0) == pytest.approx(0.1)
    played = led.settle(10.045)
    assert [f.seq for f in played] == [0, 1, 2]  # started at 10.00, 10.02, 10.04
    led.captured(frame(5), at=20.0)  # after the queue ran dry: starts when captured
    assert led.unplayed()[-1].start_t == 20.0
    dropped = led.clear(20.001)
    assert [f.seq for f in dropped] == [3, 4, 5] and led.queued_s(20.001) == 0


class FakeSource:
    """An AudioSource that takes every frame at once (the ledger does the timing)."""

    sample_rate = 24_000

    def __init__(self) -> None:
        self.captured = 0
        self.cleared = 0

    async def capture_frame(self, f: Any) -> None:
        self.captured += 1

    def clear_queue(self) -> None:
        self.cleared += 1


@contextlib.asynccontextmanager
async def _playing() -> AsyncIterator[
        tuple[Playout, FakeSource, list[AgentFrame], list[AgentFrame]]]:
    """A running playout on a fake source, with the frames it started and finished."""
    started: list[AgentFrame] = []
    finished: list[AgentFrame] = []
    src = FakeSource()
    po = Playout(cast(rtc.AudioSource, src), room="r", max_pending_frames=1000,
                 on_started=started.append, on_finished=finished.append)
    task = asyncio.create_task(po.run())
    try:
        yield po, src, started, finished
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        po.close()


async def test_playout_cancel_knows_what_was_heard() -> None:
    async with _playing() as (po, src, started, finished):
        for i in range(50):
            assert po.push(frame(i))
        po.push(frame(0, turn=0, session="other"))
        await asyncio.sleep(0.3)
        n_pending, n_queued = po.cancel(lambda f: f.session == "s" and f.turn <= 1)
        assert src.cleared == 1 and n_pending == 0 and n_queued > 30
        assert 13 <= len(started) <= 17  # ~0.3 s of 20 ms frames began playing
        assert started[-1].text_end == len(started)
        assert po.pending_frames("other") == 1  # the other session's frame goes on
        await asyncio.sleep(0.05)
        assert started[-1].session == "other" and not finished


async def test_playout_take_pauses_a_reply_and_it_plays_on_where_it_stopped() -> None:
    async with _playing() as (po, src, started, finished):
        frames = [frame(i) for i in range(30)]
        frames[-1].last = True
        for f in frames:
            assert po.push(f)
        await asyncio.sleep(0.2)
        held = po.take(lambda f: f.session == "s")
        heard = len(started)
        assert 8 <= heard <= 12 and src.cleared == 1
        assert [f.seq for f in held] == list(range(heard, 30))  # nothing heard, nothing lost
        await asyncio.sleep(0.1)
        assert len(started) == heard and not finished and not po.busy("s")  # silence
        for f in held:
            assert po.push(f)
        await asyncio.sleep(0.5)
        assert [f.seq for f in started] == list(range(30))  # each frame once, in order
        assert [f.seq for f in finished] == [29]


async def test_playout_reports_the_end_of_a_reply() -> None:
    finished: list[AgentFrame] = []
    po = Playout(cast(rtc.AudioSource, FakeSource()), room="r", max_pending_frames=3,
                 on_started=lambda f: None, on_finished=finished.append)
    task = asyncio.create_task(po.run())
    try:
        frames = [frame(i) for i in range(3)]
        frames[-1].last = True
        assert all(po.push(f) for f in frames)
        await asyncio.sleep(0.12)
        assert [f.seq for f in finished] == [2]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        po.close()


def test_playout_bounds_its_buffer() -> None:
    po = Playout(cast(rtc.AudioSource, FakeSource()), room="r", max_pending_frames=2,
                 on_started=lambda f: None, on_finished=lambda f: None)
    assert po.push(frame(0)) and po.push(frame(1)) and not po.push(frame(2))
    assert po.dropped_full == 1


def test_livekit_config_is_local_only() -> None:
    text = LiveKitConfig(port=1234, udp_port=5678, node_ip="10.77.0.1", interface="vb0").render()
    for line in ("port: 1234", "  - 127.0.0.1", "  tcp_port: 0", "  udp_port: 5678",
                 "  use_external_ip: false", "  enable_loopback_candidate: true",
                 "  node_ip: 10.77.0.1", "      - vb0", "      - 10.77.0.1/32",
                 "    - 127.0.0.1:3478"):
        assert line in text.splitlines(), line
    assert "devkey: " in text


def test_settings_from_env() -> None:
    s = BridgeSettings.from_env({
        "BRIDGE_LIVEKIT_URL": "wss://lk.example:443", "BRIDGE_AUTO_JOIN": "yes",
        "BRIDGE_REGION": "eu-west", "BRIDGE_QUEUE_SIZE_MS": "60",
    })
    assert s.auto_join and s.region == "eu-west" and s.queue_size_ms == 60
    assert s.api_url == "https://lk.example:443"
    assert BridgeSettings.from_env({}).queue_size_ms == 100
    for bad in ({"BRIDGE_INPUT_SAMPLE_RATE_HZ": "44100"}, {"BRIDGE_AUTO_JOIN": "maybe"},
                {"BRIDGE_LIVEKIT_URL": "localhost:7880"}):
        with pytest.raises(SettingsError):
            BridgeSettings.from_env(bad)


def test_dispatch_subject_is_allowed_and_never_stored() -> None:
    subj = dispatch_subject("local")
    bridge = cast(dict[str, list[str]], permissions("bridge", "local")["subscribe"])["allow"]
    operator = cast(dict[str, list[str]], permissions("operator", "local")["publish"])["allow"]
    assert any(nats_match(p, subj) for p in bridge)
    assert any(nats_match(p, subj) for p in operator)
    for spec in [*region_streams("local"), *ops_streams(["local"])]:
        assert not any(nats_match(p, subj) for p in spec.subjects), spec.name


def test_netns_detection_outside() -> None:
    veth = netns.Veth()
    assert veth.addresses == ("10.77.0.1", "10.77.0.2") and veth.node_ip == "10.77.0.1"
    assert ["ip", "link", "set", "lo", "up"] in veth.setup_commands()
    if not netns.in_private_netns():
        assert netns.node_ip() == "127.0.0.1"
        assert netns.skip_reason()
    else:
        assert netns.node_ip() == "10.77.0.1" and netns.skip_reason() is None


@pytest.mark.parametrize(("sig", "new_session"), [("SIGTERM", False), ("SIGINT", True)])
def test_netns_call_passes_signals_on(tmp_path: Any, sig: str, new_session: bool) -> None:
    """The parent survives SIGTERM (and, for a command in its own session, Ctrl-C) and passes
    it on, so the command can shut down and its exit status comes back."""
    import os
    import signal
    import sys
    import threading
    import time

    ready = tmp_path / "ready"
    child = (
        "import pathlib, signal, sys, time\n"
        f"signal.signal(signal.{sig}, lambda *a: sys.exit(7))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(20)\n"
        "sys.exit(1)\n"
    )

    def send() -> None:
        deadline = time.monotonic() + 15
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), getattr(signal, sig))

    t = threading.Thread(target=send)
    t.start()
    try:
        assert netns.call([sys.executable, "-c", child], new_session=new_session) == 7
    finally:
        t.join()
