"""OpenTelemetry: one span per handled message, W3C trace context in NATS headers.

One conversational turn is one trace: a message that arrives without trace context (the first
audio frame of an utterance, say) is parented to a span context whose trace id is derived from
``(session, turn)``, so every stage's spans for that turn land in the same trace.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from contracts.messages import Message

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


def inject_for(msg: Message) -> dict[str, str]:
    """Trace headers for publishing ``msg``: the current span if it belongs to the message's turn,
    else the turn's own context."""
    carrier: dict[str, str] = {}
    current = trace.get_current_span().get_span_context()
    if current.is_valid and current.trace_id == turn_trace_id(msg.session, msg.turn):
        inject(carrier)
    else:
        inject(carrier, context=turn_context(msg.session, msg.turn))
    return carrier


CONSUMER = SpanKind.CONSUMER
