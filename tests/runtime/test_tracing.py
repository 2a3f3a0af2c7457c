"""One conversational turn is one trace across stages: W3C context travels in NATS headers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.runtime.stages import TickerStage
from voxbus.contracts.messages import AnyMessage, AudioIn, Message, ReplyText
from voxbus.contracts.subjects import Kind
from voxbus.runtime import tracing
from voxbus.runtime.bus import Bus
from voxbus.runtime.stage import Context, StatelessStage
from voxbus.runtime.testing import wait_until
from voxbus.runtime.worker import Worker

REGION = "trace"


class HearStage(StatelessStage):
    """audio.in -> one reply chunk of the same turn."""

    name = "hear"
    inputs: tuple[Kind, ...] = (Kind.AUDIO_IN,)

    async def handle(self, msg: AnyMessage, ctx: Context) -> AsyncIterator[Message]:
        assert isinstance(msg, AudioIn)
        yield ReplyText(session=msg.session, turn=msg.turn, seq=0, text="hi", char_start=0,
                        char_end=2)


async def test_one_turn_is_one_trace(nats_url: str) -> None:
    exporter = InMemorySpanExporter()
    if not tracing.enabled():
        tracing.configure("voxbus-test", exporter=exporter)
    else:  # another test installed the provider first: add our exporter to it
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        provider = trace.get_tracer_provider()
        assert isinstance(provider, TracerProvider)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    bus = await Bus.connect(nats_url, regions=[REGION], partitions=4)
    assert bus.tracing
    await bus.provision()
    hear, speak = Worker(bus, HearStage()), Worker(bus, TickerStage())
    await hear.start()
    await speak.start()
    try:
        for turn in (3, 4):
            await bus.publish(REGION, AudioIn(session="tr1", turn=turn, seq=0,
                                              sample_rate_hz=16000, capture_ns=time.time_ns(),
                                              pcm=b"\0\0" * 160))
        await wait_until(lambda: [s.name for s in exporter.get_finished_spans()]
                         .count("ticker ReplyText") >= 2, timeout_s=10, step_s=0.05)
        spans = [
            s for s in exporter.get_finished_spans() if s.name.split()[0] in ("hear", "ticker")
        ]
        for turn in (3, 4):
            tid = tracing.turn_trace_id("tr1", turn)
            of_turn = [s for s in spans if s.context is not None and s.context.trace_id == tid]
            by_name = {s.name: s for s in of_turn}
            assert set(by_name) == {"hear AudioIn", "ticker ReplyText"}, [s.name for s in spans]
            hear_span, tick_span = by_name["hear AudioIn"], by_name["ticker ReplyText"]
            assert tick_span.parent is not None and hear_span.context is not None
            assert tick_span.parent.span_id == hear_span.context.span_id
            assert tick_span.attributes is not None
            assert tick_span.attributes["messaging.message.conversation_id"] == "tr1"
            assert tick_span.attributes["messaging.system"] == "nats"
    finally:
        await speak.stop()
        await hear.stop()
        await bus.close()
