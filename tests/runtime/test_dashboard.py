"""The Grafana dashboard (deploy/grafana/voxbus.json) reads what the workers export: every
instrument records once, the endpoint is scraped, and each metric a panel queries is there (and
each exported family is on some panel)."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from pathlib import Path

import pytest

from voxbus.runtime import metrics

pytestmark = pytest.mark.fast

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "voxbus.json"


def _scraped_names() -> set[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    metrics.serve(port, "127.0.0.1")
    unwatch = metrics.watch("dashboard-test", lambda: {"sessions": 1, "partitions": 1, "lag": 0})
    try:
        labels = {"stage": "dashboard-test"}
        metrics.STAGE_DELAY.record(0.1, {**labels, "step": "first_text"})
        metrics.VOICE_TO_VOICE.record(0.8)
        for counter in (metrics.SESSIONS, metrics.TURNS, metrics.BARGE_INS,
                        metrics.SPECULATION, metrics.ERRORS, metrics.REDELIVERIES):
            counter.add(1, labels)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        unwatch()
        metrics.stop()
    return {line.split("{")[0].split(" ")[0] for line in body.decode().splitlines()
            if line.startswith("voxbus_")}


def test_every_panel_reads_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exported = _scraped_names()
    used: set[str] = set()
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used |= set(re.findall(r"\bvoxbus_[a-z_]+", target["expr"]))
    assert used <= exported, used - exported
    families = {re.sub(r"_(bucket|count|sum|created)$", "", n) for n in exported}
    shown = {re.sub(r"_bucket$", "", n) for n in used}
    assert families <= shown, families - shown
