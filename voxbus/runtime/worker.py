"""The loop every stage runs: lease partitions, pull their messages, decode, hand each session's
messages to the stage in order, publish what it yields, ack.

Failure rules:
- undecodable/invalid message, or ``BadInput`` from the stage: ``term`` + an error event on the
  session's control subject; the session and its neighbours go on.
- ``Retryable`` from the stage: retried in the session's lane (order kept) with backoff, up to
  ``max_deliver`` attempts, then treated as bad input.
- any other exception: logged with its traceback, error event ``internal``, ``term``.
- the worker dies: unacked messages are redelivered by JetStream to the replica that takes the
  partition over (after ``ack_wait``, which is shorter than the lease ``ttl``, so redeliveries
  come before newer messages).
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
import uuid
from dataclasses import dataclass

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js import api as js_api
from nats.js.errors import BadRequestError

from voxbus.contracts import decode, streams
from voxbus.contracts.messages import AnyMessage, Interrupt, Message
from voxbus.contracts.subjects import InvalidSubject, Kind, parse_subject, partition_filter
from voxbus.runtime import tracing
from voxbus.runtime.bus import Bus
from voxbus.runtime.lanes import Delivery, Lane, RecentKeys
from voxbus.runtime.leases import PartitionLeases
from voxbus.runtime.pull import PullConsumer
from voxbus.runtime.stage import BadInput, Context, Retryable, Stage
from voxbus.runtime.tasks import TaskSet

log = structlog.get_logger("voxbus.worker")


@dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    replica: str = ""
    lane_queue: int = 256
    lane_idle_s: float = 30.0
    ack_wait_s: float = 2.0
    lease_tick_s: float = 1.0
    max_ack_pending: int = 1024
    max_deliver: int = 5
    retry_backoff_s: float = 0.2
    drain_timeout_s: float = 20.0
    pull_batch: int = 128


def _replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Partition:
    """One leased partition of one region: its pull consumers and its sessions' lanes."""

    def __init__(self, worker: Worker, region: str, index: int) -> None:
        self.w = worker
        self.region = region
        self.index = index
        self.lanes: dict[str, Lane] = {}
        # Messages handled lately (any redelivery is of one of the last max_ack_pending).
        self._done = RecentKeys(worker.opts.max_ack_pending * 2)
        self._pullers = TaskSet(f"pull-{region}-{index}")
        self._lanes = TaskSet(f"lanes-{region}-{index}")

    def consumer_name(self) -> str:
        return f"{self.w.stage.name}-p{self.index}"

    async def start(self) -> None:
        for stream, _kinds in self.w.consumer_plan(self.region):
            puller = PullConsumer(
                self.w.bus.nc,
                stream=stream,
                consumer=self.consumer_name(),
                handler=self.on_msg,
                batch=self.w.opts.pull_batch,
            )
            self._pullers.spawn(puller.run(), name=f"pull-{stream}-{self.index}")

    async def drain(self, timeout_s: float) -> None:
        """Stop pulling, finish and ack what was already taken, then stop the lanes."""
        await self._pullers.close()
        try:
            async with asyncio.timeout(timeout_s):
                for lane in list(self.lanes.values()):
                    await lane.drained()
        except TimeoutError:
            log.warning("drain_timeout", partition=self.index, lanes=len(self.lanes))
        await self._lanes.close()

    def pending(self) -> list[Delivery]:
        return [d for lane in self.lanes.values() for d in lane.pending()]

    async def on_msg(self, raw: Msg) -> None:
        w = self.w
        try:
            subj = parse_subject(raw.subject)
        except InvalidSubject as e:
            log.error("bad_subject", subject=raw.subject, error=str(e))
            await raw.term()
            return
        try:
            msg = decode(raw.data)
            if msg.session != subj.session:
                raise BadInput("session_mismatch", f"message for {msg.session!r} on {raw.subject}")
        except (msgspec.DecodeError, BadInput) as e:
            code = e.code if isinstance(e, BadInput) else "bad_message"
            log.warning("bad_message", code=code, subject=raw.subject, session=subj.session,
                        error=str(e))
            await raw.term()
            await w.bus.publish_error(
                self.region, subj.session, turn=0, code=code, message=str(e), stage=w.stage.name,
                source_subject=raw.subject,
            )
            return
        d = self._delivery(raw, msg)
        if subj.kind in w.stage.urgent:
            await self.urgent(d)
            return
        lane = self.lanes.get(msg.session)
        if raw.metadata.num_delivered > 1 and await self._duplicate(d, lane):
            return
        if lane is None:
            lane = Lane(
                msg.session,
                process=self._process,
                skip=w.skip,
                maxsize=w.opts.lane_queue,
                on_exit=self._lane_exit,
            )
            self.lanes[msg.session] = lane
            lane.task = self._lanes.spawn(lane.run(), name=f"lane-{msg.session}")
        await lane.queue.put(d)

    async def _process(self, d: Delivery) -> None:
        await self.w.process(d)
        self._done.add(d.key)

    async def _duplicate(self, d: Delivery, lane: Lane | None) -> bool:
        """A redelivered copy of a message this partition handled already, or still holds.

        JetStream redelivers when our ack is late, e.g. while the message waited for a full
        lane; handling the copy too would feed the stage the same input twice (a repeated audio
        frame changes what the STT hears). A copy of a handled message is acked; a copy of a
        held one is dropped and the held one marked in progress (its own ack settles both).
        """
        if d.key in self._done:
            await d.raw.ack()
        elif lane is not None and (held := lane.holding(d.key)) is not None:
            held.touched = time.monotonic()
            await held.raw.in_progress()
        else:
            return False  # taken over from another replica, or never handled: handle it
        self.w.redeliveries_dropped += 1
        log.info("redelivery_dropped", subject=d.subject, session=d.msg.session,
                 stream_seq=d.key[1])
        return True

    def _delivery(self, raw: Msg, msg: AnyMessage) -> Delivery:
        """A Delivery whose ack timer starts when the message was stored, not when our callback
        got to it: messages can wait in the client's buffer while a lane is full, and the
        keep-alive must mark those in progress before ``ack_wait`` runs out."""
        meta = raw.metadata
        now = time.monotonic()
        waited = max(0.0, time.time() - meta.timestamp.timestamp())
        return Delivery(raw=raw, msg=msg, region=self.region, subject=raw.subject, received=now,
                        touched=now - waited, key=(meta.stream, meta.sequence.stream))

    def _lane_exit(self, lane: Lane) -> None:
        if self.lanes.get(lane.session) is lane:
            del self.lanes[lane.session]
            self.w.interrupted.pop(lane.session, None)

    async def urgent(self, d: Delivery) -> None:
        if isinstance(d.msg, Interrupt):
            lane = self.lanes.get(d.msg.session)
            if lane is not None:
                lane.interrupt(d.msg.turn)
            self.w.interrupted[d.msg.session] = max(
                d.msg.turn, self.w.interrupted.get(d.msg.session, 0)
            )
        await self.w.process(d)


class Worker:
    def __init__(self, bus: Bus, stage: Stage, opts: WorkerOptions | None = None) -> None:
        self.bus = bus
        self.stage = stage
        self.opts = opts or WorkerOptions()
        self.replica = self.opts.replica or _replica_id()
        self.partitions: dict[tuple[str, int], Partition] = {}
        self.interrupted: dict[str, int] = {}
        self.handled = 0
        self.redeliveries_dropped = 0  # copies of messages a lane still held
        self._leases: list[PartitionLeases] = []
        self._tasks = TaskSet(f"worker-{stage.name}")
        self.log = log.bind(stage=stage.name, replica=self.replica)

    # ---- consumers ----------------------------------------------------------------------------

    def consumer_plan(self, region: str) -> list[tuple[str, list[Kind]]]:
        by_stream: dict[str, list[Kind]] = {}
        for kind in (*self.stage.inputs, *self.stage.urgent):
            by_stream.setdefault(streams.stream_of(region, kind), []).append(kind)
        return sorted(by_stream.items())

    async def ensure_consumers(self, region: str) -> None:
        for stream, kinds in self.consumer_plan(region):
            for p in range(self.bus.partitions):
                cfg = js_api.ConsumerConfig(
                    durable_name=f"{self.stage.name}-p{p}",
                    filter_subjects=[partition_filter(region, p, k) for k in kinds],
                    ack_policy=js_api.AckPolicy.EXPLICIT,
                    deliver_policy=js_api.DeliverPolicy.NEW,
                    ack_wait=self.opts.ack_wait_s,
                    max_ack_pending=self.opts.max_ack_pending,
                    max_deliver=-1,
                    max_waiting=64,
                )
                try:
                    await self.bus.js.add_consumer(stream, cfg)
                except BadRequestError as e:  # exists with another config: keep its position
                    self.log.warning("consumer_exists", stream=stream, error=str(e))

    # ---- message handling ---------------------------------------------------------------------

    async def skip(self, d: Delivery) -> None:
        """A message of an interrupted turn: acknowledged without work."""
        await d.raw.ack()

    async def process(self, d: Delivery) -> None:
        msg = d.msg
        headers = d.raw.headers or {}
        ctx = Context(bus=self.bus, region=d.region, session=msg.session, subject=d.subject,
                      headers=headers, turn=msg.turn, stage=self.stage.name)
        while True:
            try:
                if self.bus.tracing:
                    with tracing.tracer().start_as_current_span(
                        f"{self.stage.name} {type(msg).__name__}",
                        context=tracing.parent_for(msg, headers),
                        kind=tracing.CONSUMER,
                        attributes={
                            "messaging.system": "nats",
                            "messaging.destination.name": d.subject,
                            "messaging.message.conversation_id": msg.session,
                            "voxbus.turn": msg.turn,
                            "voxbus.stage": self.stage.name,
                        },
                    ):
                        await self._run_handler(d, ctx)
                else:
                    await self._run_handler(d, ctx)
                await d.raw.ack()
                self.handled += 1
                return
            except Retryable as e:
                if ctx.attempt >= self.opts.max_deliver:
                    await self._reject(d, "retries_exhausted", str(e))
                    return
                ctx.log.warning("retrying", attempt=ctx.attempt, error=str(e))
                await asyncio.sleep(self.opts.retry_backoff_s * 2 ** (ctx.attempt - 1))
                ctx.attempt += 1
            except BadInput as e:
                await self._reject(d, e.code, str(e))
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                ctx.log.exception("handler_failed", subject=d.subject)
                await self._reject(d, "internal", f"{type(e).__name__}: {e}")
                return

    async def _run_handler(self, d: Delivery, ctx: Context) -> None:
        session = d.msg.session
        gen = self.stage.handle(d.msg, ctx)
        try:
            async for out in gen:
                if 0 < out.turn <= self.interrupted.get(session, 0) and not isinstance(
                    d.msg, Interrupt
                ):
                    ctx.log.info("stale_output_dropped", out_turn=out.turn)
                    break
                await self.bus.publish(d.region, out)
        finally:
            aclose = getattr(gen, "aclose", None)
            if aclose is not None:  # an async generator: run its cleanup now
                await aclose()

    async def _reject(self, d: Delivery, code: str, message: str) -> None:
        self.log.warning("message_rejected", code=code, subject=d.subject, session=d.msg.session,
                         error=message)
        await d.raw.term()
        await self.bus.publish_error(
            d.region, d.msg.session, turn=d.msg.turn, code=code, message=message,
            stage=self.stage.name, source_subject=d.subject,
        )

    async def publish(self, region: str, msg: Message) -> None:
        await self.bus.publish(region, msg)

    # ---- lifecycle ----------------------------------------------------------------------------

    async def _keep_alive(self) -> None:
        """Tell JetStream that messages taken but not yet acked are still being worked on."""
        every = self.opts.ack_wait_s / 2
        while True:
            await asyncio.sleep(every / 2)
            now = time.monotonic()
            for part in list(self.partitions.values()):
                for d in part.pending():
                    if now - d.touched >= every:
                        d.touched = now
                        await d.raw.in_progress()
                for lane in list(part.lanes.values()):
                    if lane.idle_for(now) >= self.opts.lane_idle_s and lane.task is not None:
                        lane.task.cancel()

    async def _acquired(self, region: str, p: int) -> None:
        part = Partition(self, region, p)
        self.partitions[(region, p)] = part
        await part.start()

    async def _released(self, region: str, p: int) -> None:
        part = self.partitions.pop((region, p), None)
        if part is not None:
            await part.drain(self.opts.drain_timeout_s)

    async def start(self) -> None:
        await self.stage.start()
        for region in self.bus.regions:
            await self.ensure_consumers(region)
            leases = PartitionLeases(
                await self.bus.kv(streams.lease_bucket(region)),
                stage=self.stage.name,
                replica=self.replica,
                partitions=self.bus.partitions,
                on_acquire=functools.partial(self._acquired, region),
                on_release=functools.partial(self._released, region),
                tick_s=self.opts.lease_tick_s,
            )
            self._leases.append(leases)
            await leases.tick()
            self._tasks.spawn(leases.run(), name=f"leases-{region}")
        self._tasks.spawn(self._keep_alive(), name="keep-alive")
        self.log.info("worker_started", regions=self.bus.regions)

    async def stop(self) -> None:
        """Drain: stop taking work, finish and ack what was taken, hand the partitions back."""
        await self._tasks.close()
        for leases in self._leases:
            await leases.release_all()
        await self.stage.stop()
        self.log.info("worker_stopped", handled=self.handled)

    async def run_until(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
