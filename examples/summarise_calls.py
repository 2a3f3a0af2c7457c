"""Summarise each finished call with the LLM stage's own model: an analytics consumer that
needs only ``voxbus-contracts`` (``pip wheel ./voxbus/contracts``) and nats-py.

It reads the users' final transcripts from the region's text stream (durable reader
``analytics-7``), and when a call has said nothing for ``--idle`` seconds it asks the LLM stage
for a one-sentence summary: the LLM stage answers any ``EndOfTurn`` on the bus, so a summary is
one turn of a session of its own (``sum-<session>``). The summary's session needs an identity
that may publish turns (the dev setup's open server; with ``voxbus nats --secure``, the
operator's). Transcripts are personal data: so are summaries. (The TTS stage speaks every reply,
this one too, to nobody: a text-only kind of session is not there yet.)

What people said travels sealed under each session's own key (``voxbus.contracts.sealing``): the
reader opens it with the key from the region's keys bucket, which its identity may read while
the session lives (``voxbus-contracts[sealed]`` brings the cipher). A purged session's key is
gone, and so is everything of it this reader had not read yet.

    NATS_URL=nats://127.0.0.1:4222 python examples/summarise_calls.py --region local
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

from voxbus.contracts import decode, encode, streams, subject_for
from voxbus.contracts.messages import AnyMessage, EndOfTurn, ReplyEnd, Sealed, Transcript
from voxbus.contracts.sealing import SealError, key_name, unseal


async def opened(nc: Client, region: str, data: bytes) -> AnyMessage | None:
    """A message off the bus, opened with its session's key; ``None`` where the session was
    purged (its key erased)."""
    msg = decode(data)
    if not isinstance(msg, Sealed):
        return msg
    keys = await nc.jetstream().key_value(streams.keys_bucket(region))
    try:
        return unseal(msg, (await keys.get(key_name(msg.session))).value or b"")
    except (NotFoundError, SealError):
        return None


async def summarise(nc: Client, region: str, session: str, lines: list[str]) -> str:
    """One turn of session ``sum-<session>`` to the LLM stage; its reply."""
    sid = f"sum-{session}"[:64]
    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_reply(msg: Msg) -> None:
        reply = await opened(nc, region, msg.data)
        if isinstance(reply, ReplyEnd) and not done.done():
            done.set_result(reply.text)

    sub = await nc.subscribe(f"voxbus.{region}.{sid}.llm.reply", cb=on_reply)
    now = time.time_ns()
    ask = EndOfTurn(session=sid, turn=1, speech_start_ns=now, speech_end_ns=now, at_ns=now,
                    transcript="Summarise this phone call in one sentence: " + " ".join(lines))
    await nc.jetstream().publish(subject_for(region, ask), encode(ask))
    try:
        return await asyncio.wait_for(done, 60)
    finally:
        await sub.unsubscribe()


async def main(region: str, idle_s: float, once: bool) -> None:
    nc = await nats.connect(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    js = nc.jetstream()
    stream = streams.text_stream(region)
    await js.add_consumer(stream, ConsumerConfig(
        durable_name="analytics-7", ack_policy=AckPolicy.EXPLICIT,
        filter_subject=f"voxbus.{region}.*.*.stt.transcript"))
    sub = await js.pull_subscribe_bind("analytics-7", stream)
    calls: dict[str, tuple[float, list[str]]] = {}  # session -> (last final, what was said)
    while True:
        try:
            for m in await sub.fetch(50, timeout=1.0):
                msg = await opened(nc, region, m.data)
                if isinstance(msg, Transcript) and msg.is_final and msg.text.strip():
                    said = calls.get(msg.session, (0.0, []))[1]
                    calls[msg.session] = (time.monotonic(), [*said, msg.text])
                await m.ack()
        except (nats.errors.TimeoutError, TimeoutError):  # nats-py raises either
            pass
        for session, (last, lines) in list(calls.items()):
            if time.monotonic() - last >= idle_s:
                del calls[session]
                print(f"{session}: {await summarise(nc, region, session, lines)}", flush=True)
                if once:
                    await nc.close()
                    return


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--region", default="local")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of quiet that end a call")
    ap.add_argument("--once", action="store_true", help="exit after the first summary")
    a = ap.parse_args()
    asyncio.run(main(a.region, a.idle, a.once))
