"""``voxbus top`` against a real nats-server with a real worker holding its partitions, and the
worker's metrics endpoint; and the percentile arithmetic on histogram buckets."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from tests.conftest import REGION
from tests.llm.test_stage import Outputs, turn
from voxbus.ops.top import Latency, parse_metrics, quantile
from voxbus.runtime import metrics
from voxbus.runtime.bus import Bus
from voxbus.runtime.testing import running
from voxbus.services.llm.fake import FakeLLM, FakeTurn
from voxbus.services.llm.settings import LlmSettings
from voxbus.services.llm.stage import LlmStage


@pytest.mark.fast
def test_quantiles_come_from_the_buckets_growth() -> None:
    assert quantile([(0.1, 0), (0.5, 10), (1.0, 10), (float("inf"), 10)], 0.5) == pytest.approx(
        0.3)
    assert quantile([(0.1, 0), (float("inf"), 0)], 0.5) is None
    before = parse_metrics('x_bucket{le="0.5",stage="llm"} 4\nx_bucket{le="+Inf",stage="llm"} 4\n')
    after = parse_metrics('x_bucket{le="0.5",stage="llm"} 4\nx_bucket{le="+Inf",stage="llm"} 8\n')
    lat = Latency(60)
    lat.add(before, now=0.0)
    lat.add(after, now=10.0)
    # the 4 new observations all lie above 0.5 s: the old ones do not count
    (p50,) = lat.percentiles("x", {"stage": "llm"}, (0.5,))
    assert p50 == 0.5


@pytest.fixture
def port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = int(s.getsockname()[1])
    yield metrics.serve(free, "127.0.0.1")
    metrics.stop()


async def test_top_shows_replicas_partitions_lag_and_latency(
    bus: Bus, nats_url: str, port: int
) -> None:
    fake = FakeLLM([FakeTurn.words("We open at nine.", first_token_delay_s=0.2)])
    out = await Outputs.on(bus)
    async with running(bus, LlmStage(fake, LlmSettings())):
        for n in (1, 2):
            await bus.publish(REGION, turn("top1", n, f"Question {n}?"))
            await out.end("top1", n)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voxbus.cli", "top", "--once", "--metrics",
            f"http://127.0.0.1:{port}/metrics",
            env={**os.environ, "NATS_URL": nats_url, "VOXBUS_REGIONS": REGION,
                 "VOXBUS_PARTITIONS": "8"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    text = stdout.decode()
    llm = next(line for line in text.splitlines() if line.split()[:2] == [REGION, "llm"])
    cols = llm.split()
    replicas, partitions, _sessions, lag, unacked, p50 = cols[2:8]
    assert (replicas, partitions, lag, unacked) == ("1", "8", "0", "0"), text
    # The endpoint is this test process's, so it holds what earlier tests recorded too: the
    # percentile is checked against the endpoint's own buckets, read the same way.
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read())
    lat = Latency()
    lat.add(parse_metrics(body.decode()))
    (want,) = lat.percentiles("voxbus_stage_delay_seconds",
                              {"stage": "llm", "step": "first_text"}, (0.5,))
    assert want is not None and abs(int(p50) - round(want * 1000)) <= 1, (text, want)
    stt = next(line for line in text.splitlines() if line.split()[:2] == [REGION, "stt"])
    assert stt.split()[2:4] == ["0", "0"] and stt.endswith("none"), text
    assert "voice to voice" in text
