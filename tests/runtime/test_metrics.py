"""Metrics on a Prometheus endpoint: the LLM stage as a real worker on a real nats-server, with
the endpoint served in this process; what it records is read back over HTTP, as Prometheus
would scrape it."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from tests.conftest import REGION
from tests.llm.test_stage import Outputs, commit, guess
from voxbus.contracts.messages import TurnResumed
from voxbus.runtime import metrics
from voxbus.runtime.bus import Bus
from voxbus.runtime.settings import SettingsError
from voxbus.runtime.testing import running, wait_until
from voxbus.services.llm.fake import FakeLLM, FakeTurn
from voxbus.services.llm.settings import LlmSettings
from voxbus.services.llm.stage import LlmStage


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    """Samples by ``name{labels}`` (labels sorted, the exporter's ``otel_scope_*`` left out)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, _, labels = series.partition("{")
        kept = sorted(kv for kv in labels.rstrip("}").split(",")
                      if kv and not kv.startswith("otel_scope_"))
        out[name + ("{" + ",".join(kept) + "}" if kept else "")] = float(value)
    return out


@pytest.fixture
def port() -> Iterator[int]:
    """The endpoint, served for this test only (later tests' workers measure no lag)."""
    yield metrics.serve(_free_port(), "127.0.0.1")
    metrics.stop()


async def test_a_worker_s_turns_speculation_and_partitions_are_scraped(
    bus: Bus, port: int
) -> None:
    fake = FakeLLM([FakeTurn.words("We open at nine.", token_delay_s=0.01),
                    FakeTurn.words("A much longer guess that goes on", token_delay_s=0.05),
                    FakeTurn.words("Four at eight, booked.")])
    out = await Outputs.on(bus)
    async with running(bus, LlmStage(fake, LlmSettings())):
        await bus.publish(REGION, guess("sq7zk", 1, "When does the zebrafish hall open?", 1))
        await bus.publish(REGION, commit("sq7zk", 1, "When does the zebrafish hall open?", 1))
        await out.end("sq7zk", 1)
        await bus.publish(REGION, guess("sq7zk", 2, "A table for", 1))
        await wait_until(lambda: bool(out.chunks("sq7zk", 2)), timeout_s=5)
        await bus.publish(REGION, TurnResumed(session="sq7zk", turn=2, speculation=1))
        await bus.publish(REGION, commit("sq7zk", 2, "A table for four.", 0))
        await out.end("sq7zk", 2)
        live = await asyncio.to_thread(_scrape, port)
    body = "\n".join(k for k in live if k.startswith("voxbus_"))
    assert live['voxbus_speculation_total{outcome="hit",stage="llm"}'] >= 1
    assert live['voxbus_speculation_total{outcome="miss",stage="llm"}'] >= 1
    assert live['voxbus_turns_total{stage="llm"}'] >= 2
    assert live['voxbus_stage_delay_seconds_count{stage="llm",step="first_text"}'] >= 2
    assert live['voxbus_stage_delay_seconds_bucket{le="0.5",stage="llm",step="first_text"}'] >= 1
    assert live['voxbus_partitions_held{stage="llm"}'] == 8  # all of them, while it runs
    assert live['voxbus_sessions_total{stage="llm"}'] >= 1
    assert live['voxbus_consumer_lag{stage="llm"}'] >= 0
    assert "sq7zk" not in body and "open" not in body, "a session id or text in a label"
    # the worker stopped: it holds nothing any more
    await wait_until(lambda: _scrape(port).get('voxbus_partitions_held{stage="llm"}', 0) == 0,
                     timeout_s=5, step_s=0.1, what="no partition held after the stop")


@pytest.mark.fast
def test_a_port_in_use_is_one_line(port: int) -> None:
    with pytest.raises(SettingsError, match="cannot serve metrics"):
        metrics.stop()
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", port))
            metrics.serve(port, "127.0.0.1")


@pytest.mark.fast
def test_a_bad_metrics_port_is_one_line() -> None:
    with pytest.raises(SettingsError, match="VOXBUS_METRICS_PORT"):
        metrics.port_from_env({"VOXBUS_METRICS_PORT": "nine"})
    assert metrics.port_from_env({}) is None
    proc = subprocess.run([sys.executable, "-m", "voxbus.cli", "stt"],
                          env={"VOXBUS_METRICS_PORT": "99999", "PATH": ""},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "voxbus stt: VOXBUS_METRICS_PORT must be a port number (1-65535), got '99999'"]
