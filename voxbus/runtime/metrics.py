"""Metrics: OpenTelemetry instruments, exported on a Prometheus endpoint.

``VOXBUS_METRICS_PORT`` (unset: off) serves ``/metrics`` on that port (``VOXBUS_METRICS_HOST``,
default all interfaces). Instruments are made through OpenTelemetry's API at import, so code
records whether or not an exporter is on; ``serve_from_env`` installs the SDK's meter provider
with a Prometheus reader once per process. Names follow OpenTelemetry's conventions (dotted,
unit ``s``); the Prometheus exporter writes them as ``voxbus_stage_delay_seconds`` and so on.
Attributes are small closed sets (stage, step, outcome, error code): never a session id or text.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from typing import Any, Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from voxbus.runtime.settings import SettingsError

_meter = metrics.get_meter("voxbus")

#: Seconds from one step of a turn to the next, as each stage sees it: ``step`` is
#: ``final_transcript`` (STT: end of speech to the final), ``first_text`` (LLM: end of turn to the
#: first reply text), ``first_audio`` (TTS: first reply text to its first audio frame).
STAGE_DELAY: Final = _meter.create_histogram(
    "voxbus.stage.delay", unit="s", description="end of one step of a turn to the next, per stage")
#: Seconds from the end of the caller's speech to the agent's first audio played (the bridge).
VOICE_TO_VOICE: Final = _meter.create_histogram(
    "voxbus.voice_to_voice", unit="s",
    description="end of the caller's speech to the first agent audio played")
SESSIONS: Final = _meter.create_counter(
    "voxbus.sessions", description="sessions opened (bridge: callers; stages: session handlers)")
TURNS: Final = _meter.create_counter("voxbus.turns", description="user turns handled")
BARGE_INS: Final = _meter.create_counter(
    "voxbus.barge_ins", description="agent replies cut because the caller spoke")
SPECULATION: Final = _meter.create_counter(
    "voxbus.speculation",
    description="replies prepared for a speculative turn: outcome=hit (played) or miss (dropped)")
ERRORS: Final = _meter.create_counter("voxbus.errors", description="error events, by code")
REDELIVERIES: Final = _meter.create_counter(
    "voxbus.redeliveries", description="messages JetStream delivered more than once")

#: Latency buckets, seconds: voice latencies live between 50 ms and a few seconds.
BUCKETS_S: Final = (0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)

_Probe = Callable[[], dict[str, int]]
_probes: dict[int, tuple[str, _Probe]] = {}
_lock = threading.Lock()
_served: int | None = None
_server: Any = None  # the HTTP server, while serving
_reader_installed = False


def watch(stage: str, probe: _Probe) -> Callable[[], None]:
    """Report ``probe()`` (``{"sessions": n, "partitions": m}``) as gauges for ``stage`` until the
    returned function is called (a worker's held sessions and partitions)."""
    key = id(probe)
    with _lock:
        _probes[key] = (stage, probe)

    def unwatch() -> None:
        with _lock:
            _probes.pop(key, None)

    return unwatch


def _gauge(name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_: CallbackOptions) -> Iterable[Observation]:
        totals: dict[str, int] = {}
        with _lock:
            probes = list(_probes.values())
        for stage, probe in probes:
            totals[stage] = totals.get(stage, 0) + probe().get(name, 0)
        return [Observation(v, {"stage": s}) for s, v in sorted(totals.items())]

    return observe


_meter.create_observable_gauge("voxbus.sessions.active", callbacks=[_gauge("sessions")],
                               description="sessions a worker holds now")
_meter.create_observable_gauge("voxbus.partitions.held", callbacks=[_gauge("partitions")],
                               description="partitions whose lease a worker holds now")
_meter.create_observable_gauge(
    "voxbus.consumer.lag", callbacks=[_gauge("lag")],
    description="messages waiting in the consumers of the partitions a worker holds (read every "
                "few seconds from the server)")


def serving() -> bool:
    """An exporter is on in this process (worth measuring what needs a server round trip)."""
    return _served is not None


def port_from_env(environ: dict[str, str] | None = None) -> int | None:
    env = os.environ if environ is None else environ
    raw = env.get("VOXBUS_METRICS_PORT", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise SettingsError(f"VOXBUS_METRICS_PORT must be a port number (1-65535), got {raw!r}")
    return int(raw)


def serve(port: int, host: str = "0.0.0.0") -> int:
    """Install the Prometheus reader (once per process) and serve ``/metrics`` on ``port``;
    while served, a call returns the port already served."""
    global _served, _server, _reader_installed
    with _lock:
        if _served is not None:
            return _served
        from prometheus_client import start_http_server

        if not _reader_installed:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from opentelemetry.sdk.metrics import Histogram, MeterProvider
            from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

            view = View(instrument_type=Histogram,
                        aggregation=ExplicitBucketHistogramAggregation(BUCKETS_S))
            metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()],
                                                     views=[view]))
            _reader_installed = True
        try:
            _server, _thread = start_http_server(port, addr=host)
        except OSError as e:  # in use (each process needs its own port), or a bad address
            raise SettingsError(f"VOXBUS_METRICS_PORT={port}: cannot serve metrics on "
                                f"{host or '*'}:{port} ({e.strerror or e})") from None
        _served = port
        return port


def stop() -> None:
    """Stop serving (the instruments go on recording into the installed reader)."""
    global _served, _server
    with _lock:
        server, _server, _served = _server, None, None
    if server is not None:
        server.shutdown()
        server.server_close()


def serve_from_env() -> int | None:
    """``serve`` on ``VOXBUS_METRICS_PORT`` when it is set; the port, or None."""
    port = port_from_env()
    if port is None:
        return None
    return serve(port, os.environ.get("VOXBUS_METRICS_HOST", "") or "0.0.0.0")
