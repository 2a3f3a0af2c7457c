"""The loop every stage runs: lease partitions, pull their messages, decode, and hand them to
the partition's sessions (``runtime.sessions``: lanes, handlers, admission, publishing, ack).

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
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js import api as js_api
from nats.js.errors import BadRequestError

from voxbus.contracts import decode, streams
from voxbus.contracts.subjects import InvalidSubject, Kind, parse_subject, partition_filter
from voxbus.runtime.bus import Bus
from voxbus.runtime.lanes import Delivery
from voxbus.runtime.leases import PartitionLeases
from voxbus.runtime.pull import PullConsumer
from voxbus.runtime.sessions import Admission, LaneOptions, SessionLanes, SessionStats
from voxbus.runtime.stage import BadInput, Stage
from voxbus.runtime.tasks import TaskSet

log = structlog.get_logger("voxbus.worker")


@dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    replica: str = ""
    lane_queue: int = 256
    ack_wait_s: float = 2.0
    lease_tick_s: float = 1.0
    max_ack_pending: int = 1024
    max_deliver: int = 5
    retry_backoff_s: float = 0.2
    drain_timeout_s: float = 20.0
    pull_batch: int = 128


def _replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class NatsInbound:
    """A JetStream delivery as the runtime acknowledges it."""

    __slots__ = ("_meta", "raw")

    def __init__(self, raw: Msg) -> None:
        self.raw = raw
        self._meta = raw.metadata

    @property
    def subject(self) -> str:
        return self.raw.subject

    @property
    def headers(self) -> Mapping[str, str]:
        return self.raw.headers or {}

    @property
    def num_delivered(self) -> int:
        return int(self._meta.num_delivered)

    @property
    def key(self) -> tuple[str, int]:
        return (self._meta.stream, self._meta.sequence.stream)

    @property
    def stored_age_s(self) -> float:
        return max(0.0, time.time() - self._meta.timestamp.timestamp())

    async def ack(self) -> None:
        await self.raw.ack()

    async def nak(self, delay_s: float) -> None:
        await self.raw.nak(delay=delay_s)

    async def term(self) -> None:
        await self.raw.term()

    async def in_progress(self) -> None:
        await self.raw.in_progress()


class Partition:
    """One leased partition of one region: its pull consumers and its sessions."""

    def __init__(self, worker: Worker, region: str, index: int) -> None:
        self.w = worker
        self.region = region
        self.index = index
        o = worker.opts
        self.sessions = SessionLanes(
            worker.stage, worker.bus, region, admission=worker.admission, stats=worker.stats,
            opts=LaneOptions(lane_queue=o.lane_queue, max_deliver=o.max_deliver,
                             retry_backoff_s=o.retry_backoff_s,
                             recent_keys=o.max_ack_pending * 2),
            name=f"sessions-{region}-{index}",
        )
        self._pullers = TaskSet(f"pull-{region}-{index}")

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
        """Stop pulling, finish and ack what was already taken, then close the sessions."""
        await self._pullers.close()
        await self.sessions.drain(timeout_s)

    def pending(self) -> list[Delivery]:
        return self.sessions.pending()

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
        inbound = NatsInbound(raw)
        now = time.monotonic()
        # The ack timer runs from delivery, not from when this callback got to the message.
        d = Delivery(inbound=inbound, msg=msg, region=self.region, received=now,
                     touched=now - inbound.stored_age_s)
        if subj.kind in w.stage.urgent:
            await self.sessions.urgent(d)
        else:
            await self.sessions.deliver(d)


class Worker:
    def __init__(self, bus: Bus, stage: Stage, opts: WorkerOptions | None = None) -> None:
        self.bus = bus
        self.stage = stage
        self.opts = opts or WorkerOptions()
        self.replica = self.opts.replica or _replica_id()
        self.partitions: dict[tuple[str, int], Partition] = {}
        self.admission = Admission(stage.policy.max_sessions)
        self.stats = SessionStats()
        self._leases: list[PartitionLeases] = []
        self._tasks = TaskSet(f"worker-{stage.name}")
        self.log = log.bind(stage=stage.name, replica=self.replica)

    @property
    def handled(self) -> int:
        return self.stats.handled

    @property
    def redeliveries_dropped(self) -> int:
        return self.stats.redeliveries_dropped

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
                        await d.inbound.in_progress()
                part.sessions.sweep(now)

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
