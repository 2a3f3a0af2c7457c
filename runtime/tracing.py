"""OpenTelemetry: one span per handled message, W3C trace context in NATS headers.

One conversational turn is one trace: a message that arrives without trace context (the first
audio frame of an utterance, say) is parented to a span context whose trace id is derived from
``(session, turn)``, so every stage's spans for that turn land in the same trace.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from contracts.messages import Message

TRACER_NAME = "voxbus"


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


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
