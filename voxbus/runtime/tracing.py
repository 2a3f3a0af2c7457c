"""OpenTelemetry: one span per handled message, W3C trace context in NATS headers.

One conversational turn is one trace: a message that arrives without trace context (the first
audio frame of an utterance, say) is parented to a span context whose trace id is derived from
``(session, turn)``, so every stage's spans for that turn land in the same trace.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from voxbus.contracts.messages import Message

TRACER_NAME = "voxbus"


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def enabled() -> bool:
    """True once an OpenTelemetry SDK tracer provider is installed (``configure`` or the
    application's own). Without one, spans and trace headers are skipped on the hot path."""
    return not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
    )


def configure(service: str, exporter: object | None = None) -> None:
    """Install an SDK tracer provider. With ``OTEL_EXPORTER_OTLP_ENDPOINT`` set and the OTLP
    exporter installed, spans go there; an explicit ``exporter`` (e.g. in-memory, for tests and
    benchmarks) is used as given."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[arg-type]
    elif os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError:
            pass
        else:
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


def turn_trace_id(session: str, turn: int) -> int:
    digest = hashlib.blake2b(f"{session}/{turn}".encode(), digest_size=16).digest()
    return int.from_bytes(digest, "big") or 1


def turn_context(session: str, turn: int) -> otel_context.Context:
    """A remote parent whose trace id is the turn's."""
    tid = turn_trace_id(session, turn)
    sc = SpanContext(
        trace_id=tid,
        span_id=(tid & 0xFFFF_FFFF_FFFF_FFFF) or 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(sc))


def parent_for(msg: Message, headers: Mapping[str, str] | None) -> otel_context.Context:
    """The context a handler span for ``msg`` starts in."""
    if headers and "traceparent" in headers:
        return extract(dict(headers))
    return turn_context(msg.session, msg.turn)


CONSUMER = SpanKind.CONSUMER
PRODUCER = SpanKind.PRODUCER


@contextmanager
def publishing(msg: Message) -> Iterator[dict[str, str]]:
    """Around a publish: yields the trace headers for ``msg``. Inside a handler span of the same
    turn the publish is an event on that span; otherwise (e.g. the STT's end of turn, emitted
    while handling a frame of no turn) a short producer span in the message's turn trace, so
    the turn's trace shows when each stage emitted what. A speculative turn's messages are
    named apart: ``publish EndOfTurn.guess`` and, for its reply, ``publish ReplyText.s<k>``."""
    name = f"publish {type(msg).__name__}"
    if getattr(msg, "speculative", False):
        name += ".guess"
    elif name != "publish EndOfTurn" and (speculation := getattr(msg, "speculation", 0)):
        name += f".s{speculation}"
    current = trace.get_current_span()
    sc = current.get_span_context()
    # (a task spawned by a handler outlives its span: an ended span records nothing)
    if (sc.is_valid and current.is_recording()
            and sc.trace_id == turn_trace_id(msg.session, msg.turn)):
        current.add_event(name)
        carrier: dict[str, str] = {}
        inject(carrier)
        yield carrier
        return
    links = [trace.Link(sc)] if sc.is_valid else None
    with tracer().start_as_current_span(
        name, context=turn_context(msg.session, msg.turn), kind=PRODUCER, links=links,
        attributes={"messaging.system": "nats", "messaging.message.conversation_id": msg.session,
                    "voxbus.turn": msg.turn},
    ):
        carrier = {}
        inject(carrier)
        yield carrier


class JsonLinesExporter:
    """Writes finished spans as JSON lines (for benchmarks that read per-stage timings back)."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 - closed in shutdown()

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        for s in spans:
            ctx, parent = s.context, s.parent
            self._file.write(json.dumps({
                "name": s.name,
                "trace_id": f"{ctx.trace_id:032x}",
                "span_id": f"{ctx.span_id:016x}",
                "parent_id": f"{parent.span_id:016x}" if parent else None,
                "start_ns": s.start_time,
                "end_ns": s.end_time,
                "attributes": dict(s.attributes or {}),
                "events": [{"name": e.name, "ts_ns": e.timestamp} for e in s.events],
            }) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._file.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self._file.flush()
        return True


def configure_from_env(service: str) -> None:
    """``VOXBUS_TRACE_DIR``: spans to ``<dir>/<service>.jsonl``; ``OTEL_EXPORTER_OTLP_ENDPOINT``:
    spans to an OTLP collector (when the exporter package is installed); neither: tracing off."""
    trace_dir = os.environ.get("VOXBUS_TRACE_DIR")
    if trace_dir:
        configure(service, exporter=JsonLinesExporter(os.path.join(trace_dir, f"{service}.jsonl")))
    elif os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        configure(service)
