"""``voxbus top``: what is running, for operators, live in the terminal.

Per region and stage, read from the bus: the replicas holding partition leases (and how many
each), the messages waiting in the stage's consumers (lag: not yet delivered; and delivered but
not yet acked). From the workers' metrics endpoints (``--metrics``, comma-separated URLs of
``/metrics``): the sessions each stage holds and the latency percentiles of the last minute
(``voxbus_stage_delay_seconds`` per step, ``voxbus_voice_to_voice_seconds``), from the histogram
buckets' growth over the window. ``--once`` prints one view and exits (scripts, tests); else the
view is redrawn every ``--every`` seconds until Ctrl-C. Nothing of a session's content is read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field

from nats.js.errors import NoKeysError, NotFoundError

from voxbus.contracts import streams
from voxbus.ops.auth import ROLES
from voxbus.runtime import logging as vlog
from voxbus.runtime.bus import Bus
from voxbus.runtime.settings import BusSettings, SettingsError

#: The tools workers (``voxbus tools``) too: their replicas, partitions and the tool calls waiting.
STAGES = ("stt", "llm", "tools", "tts")
WINDOW_S = 60.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class StageRow:
    region: str
    stage: str
    replicas: dict[str, int] = field(default_factory=dict)  # replica -> partitions held
    lag: int = 0
    unacked: int = 0


def parse_metrics(text: str) -> Samples:
    """Prometheus text exposition -> {(name, labels): value} (the exporter's scope labels
    dropped)."""
    out: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, _, rest = series.partition("{")
        labels: list[tuple[str, str]] = []
        for part in rest.rstrip("}").split(","):
            key, _, val = part.partition("=")
            if key and not key.startswith("otel_scope_"):
                labels.append((key, val.strip('"')))
        try:
            out[(name, frozenset(labels))] = out.get((name, frozenset(labels)), 0.0) + float(value)
        except ValueError:
            continue
    return out


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile from cumulative (upper bound, count) buckets, interpolated linearly
    inside the bucket it falls in; None without observations."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            inside = count - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = upper, count
    return lower


class Latency:
    """Histogram samples over time; percentiles of what was observed in the last window."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._history: deque[tuple[float, Samples]] = deque()

    def add(self, samples: Samples, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._history.append((now, samples))
        while len(self._history) > 2 and now - self._history[1][0] >= self.window_s:
            self._history.popleft()

    def percentiles(self, name: str, match: dict[str, str],
                    qs: tuple[float, ...] = (0.5, 0.95)) -> list[float | None]:
        if not self._history:
            return [None for _ in qs]
        newest = self._history[-1][1]
        oldest = self._history[0][1] if len(self._history) > 1 else {}
        per_le: dict[float, float] = {}
        for (metric, labels), value in newest.items():
            if metric != f"{name}_bucket":
                continue
            d = dict(labels)
            if any(d.get(k) != v for k, v in match.items()):
                continue
            le = float(d["le"].replace("+Inf", "inf"))
            grown = value - oldest.get((metric, labels), 0.0)
            per_le[le] = per_le.get(le, 0.0) + grown
        buckets = list(per_le.items())
        return [quantile(buckets, q) for q in qs]


def sessions_of(samples: Samples, stage: str) -> int | None:
    values = [v for (name, labels), v in samples.items()
              if name == "voxbus_sessions_active" and dict(labels).get("stage") == stage]
    return int(sum(values)) if values else None


async def bus_view(bus: Bus, region: str) -> list[StageRow]:
    rows = {s: StageRow(region, s) for s in STAGES}
    kv = await bus.kv(streams.lease_bucket(region))
    try:
        keys = await kv.keys()
    except NoKeysError:
        keys = []
    for key in keys:
        stage, _, rest = key.partition(".")
        if stage not in rows or not rest.startswith("p"):
            continue
        with contextlib.suppress(Exception):  # expired meanwhile
            entry = await kv.get(key)
            if entry.value:
                replica = entry.value.decode()
                rows[stage].replicas[replica] = rows[stage].replicas.get(replica, 0) + 1
    for stage, row in rows.items():
        stream_names = sorted({streams.stream_of(region, k) for k in ROLES[stage].consumes})
        for stream in stream_names:
            for p in range(bus.partitions):
                try:
                    info = await bus.js.consumer_info(stream, f"{stage}-p{p}")
                except NotFoundError:
                    continue
                row.lag += info.num_pending or 0
                row.unacked += info.num_ack_pending or 0
    return list(rows.values())


def scrape(urls: list[str]) -> tuple[Samples, list[str]]:
    merged: Samples = {}
    failed: list[str] = []
    for url in urls:
        try:
            text = urllib.request.urlopen(url, timeout=2).read().decode()
        except Exception:  # noqa: BLE001 - a worker gone is shown, not fatal
            failed.append(url)
            continue
        for key, value in parse_metrics(text).items():
            merged[key] = merged.get(key, 0.0) + value
    return merged, failed


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


#: The delay each stage's latency columns show (the tools stage reports none: "-").
STEP_OF = {"stt": "final_transcript", "llm": "first_text", "tts": "first_audio"}


def render(rows: list[StageRow], samples: Samples, latency: Latency, failed: list[str],
           *, metrics_on: bool) -> str:
    lines = [f"voxbus top  {time.strftime('%H:%M:%S')}  (latency: last {latency.window_s:.0f} s)",
             "",
             f"{'region':<8} {'stage':<5} {'replicas':>8} {'partitions':>10} {'sessions':>8} "
             f"{'lag':>6} {'unacked':>7} {'p50 ms':>7} {'p95 ms':>7}  replicas (partitions)"]
    for r in rows:
        sessions = sessions_of(samples, r.stage) if metrics_on else None
        step = STEP_OF.get(r.stage)
        p50, p95 = (latency.percentiles("voxbus_stage_delay_seconds",
                                        {"stage": r.stage, "step": step})
                    if step is not None else (None, None))
        who = ", ".join(f"{k} ({v})" for k, v in sorted(r.replicas.items())) or "none"
        lines.append(f"{r.region:<8} {r.stage:<5} {len(r.replicas):>8} "
                     f"{sum(r.replicas.values()):>10} {'-' if sessions is None else sessions:>8} "
                     f"{r.lag:>6} {r.unacked:>7} {_ms(p50):>7} {_ms(p95):>7}  {who}")
    if metrics_on:
        p50, p95 = latency.percentiles("voxbus_voice_to_voice_seconds", {})
        lines += ["", f"voice to voice (bridge): p50 {_ms(p50)} ms, p95 {_ms(p95)} ms"]
    else:
        lines += ["", "sessions and latency: pass the workers' endpoints with --metrics"]
    lines += [f"metrics endpoint not answering: {u}" for u in failed]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    settings = BusSettings.from_env()
    settings.require_role("operator")
    urls = [u.strip() for u in args.metrics.split(",") if u.strip()]
    from voxbus.runtime.serve import connect

    bus = await connect(settings, name="voxbus-top")
    latency = Latency(args.window)
    try:
        while True:
            rows: list[StageRow] = []
            for region in bus.regions:
                rows += await bus_view(bus, region)
            samples, failed = await asyncio.to_thread(scrape, urls) if urls else ({}, [])
            latency.add(samples)
            view = render(rows, samples, latency, failed, metrics_on=bool(urls))
            if args.once:
                print(view)
                return 0
            sys.stdout.write("\x1b[H\x1b[2J" + view + "\n")
            sys.stdout.flush()
            await asyncio.sleep(args.every)
    finally:
        await bus.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="voxbus top", description=__doc__.split("\n\n")[0])
    ap.add_argument("--metrics", default="",
                    help="comma-separated /metrics URLs of the workers and bridges")
    ap.add_argument("--once", action="store_true", help="print one view and exit")
    ap.add_argument("--every", type=float, default=2.0, help="seconds between redraws")
    ap.add_argument("--window", type=float, default=WINDOW_S,
                    help="seconds of history behind the latency percentiles")
    args = ap.parse_args(argv)
    vlog.configure("warning")  # stdout is the view: logs go to stderr
    if args.every <= 0 or args.window <= 0:
        raise SettingsError("--every and --window must be positive")
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args))
    return 0
