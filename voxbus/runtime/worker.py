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
import contextlib
import datetime
import functools
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api as js_api
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue

from voxbus.contracts import decode, streams
from voxbus.contracts.messages import AnyMessage, Sealed
from voxbus.contracts.sealing import SealError
from voxbus.contracts.subjects import (
    InvalidSubject,
    Kind,
    SessionSubject,
    check_session,
    kind_of,
    parse_subject,
    partition_filter,
    partition_of,
    tombstone_subject,
)
from voxbus.runtime import health, metrics
from voxbus.runtime.bus import Bus
from voxbus.runtime.keys import KeyGone
from voxbus.runtime.lanes import Delivery, RecentKeys
from voxbus.runtime.leases import PartitionLeases
from voxbus.runtime.pull import PullConsumer
from voxbus.runtime.sessions import Admission, LaneOptions, SessionLanes, SessionStats
from voxbus.runtime.settings import Env, SettingsError
from voxbus.runtime.stage import BadInput, Stage
from voxbus.runtime.takeover import Barrier, Held
from voxbus.runtime.tasks import TaskSet
from voxbus.runtime.transient import transient

log = structlog.get_logger("voxbus.worker")


@dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    replica: str = ""
    lane_queue: int = 256
    recent_keys: int = 4096  # handled messages remembered per partition (redelivered copies)
    #: A message not acked this long after delivery is delivered again (held messages are
    #: marked in progress every half of it).
    ack_wait_s: float = 1.2
    #: How often a replica renews its leases and reads the others'.
    lease_tick_s: float = 0.4
    #: A partition is dropped when its lease went unrenewed for ``ttl - lease_fence_margin_s``.
    lease_fence_margin_s: float = 0.8
    #: A pull request lives this long. It must die before the lease can pass to another
    #: replica (``pull_expires_s < lease_fence_margin_s``): a request the server still fills
    #: for an old owner would split a session's messages between two replicas.
    pull_expires_s: float = 0.6
    #: Messages a partition's consumer hands out before any is acked. A stage that holds input
    #: (``Context.hold``: the STT keeps a turn's frames, up to 30 s of them, 1500) needs room
    #: for several such sessions per partition, or JetStream stops delivering the frames that
    #: would close their turns.
    max_ack_pending: int = 20_000
    max_deliver: int = 5
    retry_backoff_s: float = 0.2
    drain_timeout_s: float = 20.0
    pull_batch: int = 128


def worker_options_from_env(environ: Mapping[str, str] | None = None) -> WorkerOptions:
    """``VOXBUS_ACK_WAIT_S``, ``VOXBUS_LEASE_TICK_S``, ``VOXBUS_LEASE_FENCE_MARGIN_S``,
    ``VOXBUS_PULL_EXPIRES_S`` (the lease ttl is the bucket's: ``VOXBUS_LEASE_TTL_S`` when it
    is provisioned). Raises SettingsError."""
    env = Env("VOXBUS", environ)
    d = WorkerOptions()
    opts = WorkerOptions(
        ack_wait_s=env.float("ACK_WAIT_S", d.ack_wait_s),
        lease_tick_s=env.float("LEASE_TICK_S", d.lease_tick_s),
        lease_fence_margin_s=env.float("LEASE_FENCE_MARGIN_S", d.lease_fence_margin_s),
        pull_expires_s=env.float("PULL_EXPIRES_S", d.pull_expires_s),
    )
    if min(opts.ack_wait_s, opts.lease_tick_s, opts.pull_expires_s) <= 0:
        raise SettingsError("VOXBUS_ACK_WAIT_S, _LEASE_TICK_S and _PULL_EXPIRES_S must be > 0")
    if opts.pull_expires_s >= opts.lease_fence_margin_s:
        raise SettingsError(
            f"VOXBUS_PULL_EXPIRES_S ({opts.pull_expires_s}) must be below "
            f"VOXBUS_LEASE_FENCE_MARGIN_S ({opts.lease_fence_margin_s}): a pull request still "
            "open for an old owner would split a session between two replicas")
    return opts


def _replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


#: Messages this replica will not handle (lease in doubt, partition handed over) go back with this
#: delay: soon enough for the next owner, late enough not to bounce on a request still open here.
HAND_BACK_S = 0.1
#: A sealed message whose session has no key (and no tombstone) is tried again this often, this
#: long (a key a server lost is put back within seconds, by whoever holds it), then dropped.
KEYLESS_RETRY_S = 0.5
KEY_WAIT_S = 10.0


class NatsInbound:
    """A JetStream delivery as the runtime acknowledges it."""

    __slots__ = ("_meta", "_on_settle", "raw")

    def __init__(self, raw: Msg, on_settle: Callable[[], None] | None = None) -> None:
        self.raw = raw
        self._meta = raw.metadata
        self._on_settle = on_settle

    def _settle(self) -> None:
        if self._on_settle is not None:
            self._on_settle()
            self._on_settle = None

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

    # An ack that cannot reach the server is not an error of the message: JetStream redelivers
    # it, and the runtime recognises the copy (``SessionLanes._duplicate``).
    async def ack(self) -> None:
        await _tell(self.raw.ack(), "ack", self.raw)
        self._settle()

    async def nak(self, delay_s: float) -> None:
        await _tell(self.raw.nak(delay=delay_s), "nak", self.raw)
        self._settle()

    async def term(self) -> None:
        await _tell(self.raw.term(), "term", self.raw)
        self._settle()

    async def in_progress(self) -> None:
        await _tell(self.raw.in_progress(), "in_progress", self.raw)


async def _tell(op: Coroutine[Any, Any, None], what: str, raw: Msg) -> None:
    try:
        await op
    except Exception as e:  # noqa: BLE001 - classified below
        if not transient(e):
            raise
        log.debug("ack_not_sent", op=what, subject=raw.subject, error=repr(e))


class Partition:
    """One leased partition of one region: its pull consumers and its sessions."""

    def __init__(self, worker: Worker, region: str, index: int,
                 owned: Callable[[], bool] = lambda: True) -> None:
        self.w = worker
        self.region = region
        self.index = index
        self.owned = owned
        #: Sessions whose key is being found: the last message waiting for it (``on_msg``).
        self._keying: dict[str, asyncio.Future[None]] = {}
        self.started = time.monotonic()  # a partition taken after an outage may wait for keys
        o = worker.opts
        self.sessions = SessionLanes(
            worker.stage, worker.bus, region, admission=worker.admission, stats=worker.stats,
            opts=LaneOptions(lane_queue=o.lane_queue, max_deliver=o.max_deliver,
                             retry_backoff_s=o.retry_backoff_s,
                             recent_keys=o.recent_keys),
            name=f"sessions-{region}-{index}", owned=owned,
            tombstones=worker.tombstones[region],
        )
        self._pullers = TaskSet(f"pull-{region}-{index}")
        self.pulls: list[PullConsumer] = []
        self.barriers: list[Barrier] = []

    def consumer_name(self) -> str:
        return f"{self.w.stage.name}-p{self.index}"

    async def start(self) -> None:
        for stream, _kinds in self.w.consumer_plan(self.region):
            barrier = Barrier(self.w.bus.js, stream=stream, consumer=self.consumer_name(),
                              handler=self.on_msg)
            self.barriers.append(barrier)
            self._pullers.spawn(barrier.run(), name=f"barrier-{stream}-{self.index}")
            puller = PullConsumer(
                self.w.bus.nc,
                stream=stream,
                consumer=self.consumer_name(),
                handler=barrier.on_msg,
                on_missing=functools.partial(self.w.reprovision, self.region),
                batch=self.w.opts.pull_batch,
                allowed=self.owned,
                expires_s=self.w.opts.pull_expires_s,
            )
            self.pulls.append(puller)
            self._pullers.spawn(puller.run(), name=f"pull-{stream}-{self.index}")

    async def _stop_pulling(self, timeout_s: float) -> None:
        """Ask for nothing more; what the requests still out bring is handed back at once (the
        next owner gets it before anything newer); held-back messages are handed back too."""
        for puller in self.pulls:
            puller.refuse()
        for barrier in self.barriers:
            for h in barrier.take_held():
                await NatsInbound(h.raw).nak(HAND_BACK_S)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                for puller in self.pulls:
                    await puller.done.wait()
        await self._pullers.close()
        self.pulls.clear()

    async def drain(self, timeout_s: float) -> None:
        """Stop pulling, finish and ack what was already taken, then close the sessions."""
        await asyncio.gather(self._stop_pulling(self.w.opts.pull_expires_s + 1),
                             self.sessions.drain(timeout_s))

    async def abandon(self) -> None:
        """The lease may be gone: stop pulling and drop the sessions at once, acking nothing
        more (JetStream redelivers what was not acked to the replica that takes over)."""
        for puller in self.pulls:
            puller.refuse()
        await self.sessions.abandon()
        await self._stop_pulling(self.w.opts.pull_expires_s + 1)

    def pending(self) -> list[Delivery | Held]:
        return [*self.sessions.pending(), *(h for b in self.barriers for h in b.held)]

    async def on_msg(self, raw: Msg, on_settle: Callable[[], None] | None = None) -> None:
        w = self.w
        inbound = NatsInbound(raw, on_settle)
        if not self.owned():  # the lease may be gone: hand it back to the new owner
            await inbound.nak(HAND_BACK_S)
            return
        try:
            subj = parse_subject(raw.subject)
        except InvalidSubject as e:
            log.error("bad_subject", subject=raw.subject, error=str(e))
            await inbound.term()
            return
        try:
            msg = decode(raw.data)
        except msgspec.DecodeError as e:
            await self._bad(inbound, raw.subject, subj.session, "bad_message", str(e))
            return
        before = self._keying.get(subj.session)
        if before is None and (not isinstance(msg, Sealed)
                               or w.bus.keys.cached(self.region, subj.session) is not None):
            await self._take(inbound, raw.subject, subj, msg)  # the usual: nothing to wait for
            return
        # The session's key is being found (the first message here, or a server back without
        # its memory): this message and the session's next ones wait their turn in order.
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._keying[subj.session] = mine
        try:
            opened = await self._with_key(inbound, raw.subject, msg)
            if before is not None:
                await before
            if opened is not None:
                await self._take(inbound, raw.subject, subj, opened)
        finally:
            mine.set_result(None)
            if self._keying.get(subj.session) is mine:
                del self._keying[subj.session]

    async def _with_key(self, inbound: NatsInbound, subject: str,
                        msg: AnyMessage) -> AnyMessage | None:
        """``msg`` opened, once its session's key is found; ``None`` where it was settled here
        instead. Shortly after an outage (the bus came back within ``KEY_WAIT_S``, or a
        takeover), a key a server lost may be on its way back: that waits up to ``KEY_WAIT_S``
        (the partition's next messages wait too). Otherwise a message whose session has no key
        is dropped at once: its session was purged, or never had a key (hostile input must not
        hold a partition up)."""
        session = msg.session
        since = time.monotonic() - max(self.w.bus.reconnected_at, self.started)
        deadline = time.monotonic() + (KEY_WAIT_S - since if since < KEY_WAIT_S else 0.0)
        while True:
            try:
                return await self.w.bus.keys.open(self.region, msg)
            except KeyGone:
                if (session in self.w.tombstones[self.region]
                        or time.monotonic() >= deadline):
                    # purged (its key erased first), or a key that never came: dropped
                    log.info("message_without_key", subject=subject, session=session)
                    await inbound.term()
                    return None
                await asyncio.sleep(KEYLESS_RETRY_S)
            except SealError as e:
                await self._bad(inbound, subject, session, "unsealable", str(e))
                return None

    async def _bad(self, inbound: NatsInbound, subject: str, session: str, code: str,
                   error: str) -> None:
        log.warning("bad_message", code=code, subject=subject, session=session, error=error)
        await inbound.term()
        await self.w.bus.publish_error(self.region, session, turn=0, code=code, message=error,
                                       stage=self.w.stage.name, source_subject=subject)

    async def _take(self, inbound: NatsInbound, subject: str, subj: SessionSubject,
                    sealed_or_not: AnyMessage) -> None:
        w = self.w
        try:
            msg = sealed_or_not
            if isinstance(msg, Sealed):  # the usual path: its key is at hand (``on_msg``)
                sealer = w.bus.keys.cached(self.region, subj.session)
                if sealer is None:
                    raise SealError(f"a sealed message on {subject} without its key")
                msg = sealer.open(msg)
            if msg.session != subj.session:
                raise BadInput("session_mismatch", f"message for {msg.session!r} on {subject}")
            if kind_of(type(msg)) != subj.kind:  # e.g. an EndOfTurn sent as an interrupt
                raise BadInput("wrong_kind", f"{type(msg).__name__} does not belong on "
                                             f"{subj.kind.value} subjects")
        except (BadInput, SealError) as e:
            code = e.code if isinstance(e, BadInput) else "unsealable"
            await self._bad(inbound, subject, subj.session, code, str(e))
            return
        now = time.monotonic()
        # The ack timer runs from delivery, not from when this callback got to the message.
        d = Delivery(inbound=inbound, msg=msg, region=self.region, received=now,
                     touched=now - inbound.stored_age_s)
        if subj.kind in w.stage.urgent:
            await self.sessions.urgent(d)
        else:
            await self.sessions.deliver(d)


#: Consumers made again after an outage start this much before the worker lost the bus
#: (whatever the worker's and the server's clocks disagree by).
STREAM_CLOCK_SKEW_S = 2.0

#: How often a worker with metrics on reads its consumers' lag from the server.
LAG_EVERY_S = 5.0

class Worker:
    def __init__(self, bus: Bus, stage: Stage, opts: WorkerOptions | None = None, *,
                 owns_stage: bool = True) -> None:
        self.bus = bus
        self.stage = stage
        #: False where one stage serves several workers (one per region's servers): whoever
        #: made them starts and stops it.
        self.owns_stage = owns_stage
        self.opts = opts or WorkerOptions()
        if self.opts.pull_expires_s >= self.opts.lease_fence_margin_s:
            raise ValueError(f"pull requests ({self.opts.pull_expires_s}s) must expire inside "
                             f"the lease fence margin ({self.opts.lease_fence_margin_s}s)")
        self.replica = self.opts.replica or _replica_id()
        #: When the bus was last lost (wall clock): consumers made again start there.
        self._lost_at: float | None = None
        self.partitions: dict[tuple[str, int], Partition] = {}
        self.admission = Admission(stage.policy.max_sessions)
        self.stats = SessionStats()
        self._leases: dict[str, PartitionLeases] = {}
        self._tasks = TaskSet(f"worker-{stage.name}")
        #: Sessions being purged, per region (``contracts.subjects.tombstone_subject``).
        self.tombstones = {r: RecentKeys(self.opts.recent_keys) for r in bus.regions}
        self._tombstone_subs: list[Subscription] = []
        self._purges = TaskSet(f"purges-{stage.name}")
        self._provisioning = asyncio.Lock()
        self._provisioned_at: dict[str, float] = {}
        self._unwatch: Callable[[], None] = lambda: None
        self._lag = 0  # messages waiting in the held partitions' consumers, last measured
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

    def _deliver_from(self) -> tuple[js_api.DeliverPolicy, datetime.datetime | None]:
        """Where a consumer made now starts. Normally at new messages (a stage's first start
        must not replay a day of history); but one made again after this worker lost the bus
        (a server back with an empty store: its streams and consumers made again) starts at
        the moment the bus was lost. Else a consumer made a moment after another stage already
        published into the new stream misses those messages: an end of turn, and the caller
        gets no answer."""
        if self._lost_at is None:
            return js_api.DeliverPolicy.NEW, None
        since = datetime.datetime.fromtimestamp(self._lost_at - STREAM_CLOCK_SKEW_S,
                                                tz=datetime.UTC)
        return js_api.DeliverPolicy.BY_START_TIME, since

    async def ensure_consumers(self, region: str) -> None:
        deliver, since = self._deliver_from()
        for stream, kinds in self.consumer_plan(region):
            for p in range(self.bus.partitions):
                cfg = js_api.ConsumerConfig(
                    durable_name=f"{self.stage.name}-p{p}",
                    filter_subjects=[partition_filter(region, p, k) for k in kinds],
                    ack_policy=js_api.AckPolicy.EXPLICIT,
                    deliver_policy=deliver,
                    opt_start_time=since,
                    ack_wait=self.opts.ack_wait_s,
                    max_ack_pending=self.opts.max_ack_pending,
                    max_deliver=-1,
                    max_waiting=64,
                )
                try:
                    await self.bus.js.add_consumer(stream, cfg)
                except BadRequestError as e:  # exists with another config: keep its position
                    self.log.warning("consumer_exists", stream=stream, error=str(e))

    async def reprovision(self, region: str) -> KeyValue:
        """The server lost its store (or a consumer was deleted): create what this worker needs
        again. Streams and buckets are created where this identity may (``provision`` is
        idempotent); under least privilege that waits for the operator's provisioning, and
        consumers are created once the streams are back. At most once a second per region."""
        async with self._provisioning:
            bucket = streams.lease_bucket(region)
            if time.monotonic() - self._provisioned_at.get(region, 0.0) >= 1.0:
                self._provisioned_at[region] = time.monotonic()
                self.log.warning("reprovisioning", region=region)
                leases = self._leases.get(region)
                keep = streams.Retention(leases_s=leases.ttl_s) if leases else None
                try:  # with the lease ttl this worker fences by, whatever the default
                    if self.bus.may_provision:
                        await self.bus.provision(keep, create_only=True)
                except Exception as e:  # noqa: BLE001 - refused under least privilege
                    self.log.warning("provision_refused", region=region, error=repr(e))
                await self.ensure_consumers(region)
            self.bus.forget_kv(bucket)
            return await self.bus.kv(bucket)

    def _bus_lost(self) -> None:
        if self._lost_at is None or time.time() - self._lost_at > 60:  # one outage, one time
            self._lost_at = time.time()

    async def _on_reconnect(self) -> None:
        """Pull requests died with the old connection: send new ones now, not at their expiry."""
        for leases in self._leases.values():
            leases.reconnected_at = time.monotonic()
        for part in list(self.partitions.values()):
            for puller in part.pulls:
                await puller.kick()

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
        leases = self._leases[region]
        part = Partition(self, region, p, owned=functools.partial(leases.valid, p))
        self.partitions[(region, p)] = part
        await part.start()

    async def _released(self, region: str, p: int) -> None:
        part = self.partitions.get((region, p))
        if part is not None:  # kept in ``partitions`` while draining: its marks keep going
            await part.drain(self.opts.drain_timeout_s)
            if self.partitions.get((region, p)) is part:
                del self.partitions[(region, p)]

    async def _fenced(self, region: str, p: int) -> None:
        part = self.partitions.pop((region, p), None)
        if part is not None:
            await part.abandon()

    async def _on_tombstone(self, region: str, raw: Msg) -> None:
        """A session is being purged: stop it here now and drop its messages from now on (the
        purger erases after a grace longer than this takes)."""
        try:
            session = check_session(raw.data.decode())
        except (UnicodeDecodeError, InvalidSubject):
            log.warning("bad_tombstone", subject=raw.subject)
            return
        self.tombstones[region].add(session)
        self.bus.keys.forget(session)
        part = self.partitions.get((region, partition_of(session, self.bus.partitions)))
        if part is not None:
            self._purges.spawn(part.sessions.purge(session), name=f"purge-{session}")

    async def start(self) -> None:
        if self.owns_stage:
            await self.stage.start()
        for region in self.bus.regions:
            self._tombstone_subs.append(await self.bus.nc.subscribe(
                tombstone_subject(region), cb=functools.partial(self._on_tombstone, region)))
            await self.ensure_consumers(region)
            bucket = streams.lease_bucket(region)
            kv = await self.bus.kv(bucket)
            leases = PartitionLeases(
                kv,
                self.bus.js,
                bucket=bucket,
                stage=self.stage.name,
                replica=self.replica,
                partitions=self.bus.partitions,
                ttl_s=(await kv.status()).ttl or streams.LEASE_TTL_S,
                on_acquire=functools.partial(self._acquired, region),
                on_release=functools.partial(self._released, region),
                on_fence=functools.partial(self._fenced, region),
                reprovision=functools.partial(self.reprovision, region),
                tick_s=self.opts.lease_tick_s,
                fence_margin_s=self.opts.lease_fence_margin_s,
            )
            self._leases[region] = leases
            await leases.tick()
            self._tasks.spawn(leases.run(), name=f"leases-{region}")
        self._tasks.spawn(self._keep_alive(), name="keep-alive")
        self.bus.on_reconnect(self._on_reconnect)
        for leases in self._leases.values():
            self.bus.on_disconnect(leases.hold_off)
        self.bus.on_disconnect(self._bus_lost)
        unwatch_metrics = metrics.watch(self.stage.name, lambda: {
            "sessions": self.admission.taken, "partitions": len(self.partitions),
            "lag": self._lag})
        unwatch_health = health.watch(f"{self.stage.name}:{','.join(self.bus.regions)}",
                                      live=self._liveness, ready=self._readiness)

        def unwatch() -> None:
            unwatch_metrics()
            unwatch_health()

        self._unwatch = unwatch
        if metrics.serving():
            self._tasks.spawn(self._measure_lag(), name="consumer-lag")
        self.log.info("worker_started", regions=self.bus.regions)

    def _liveness(self) -> str | None:
        return next((why for leases in self._leases.values()
                     if (why := leases.liveness())), None)

    def _readiness(self) -> str | None:
        """Ready once started (the stage warm) and its leases are held in every region."""
        return next((f"{region}: {why}" for region, leases in self._leases.items()
                     if (why := leases.readiness())), None)

    async def _measure_lag(self) -> None:
        """Every ``LAG_EVERY_S``: the messages not yet delivered to the consumers of the
        partitions held here (what a lag-based autoscaler reads), for the metrics."""
        while True:
            total = 0
            for (region, _index), part in list(self.partitions.items()):
                for stream, _kinds in self.consumer_plan(region):
                    try:
                        info = await self.bus.js.consumer_info(stream, part.consumer_name())
                    except Exception:  # noqa: BLE001 - gone meanwhile, or the bus is down
                        continue
                    total += info.num_pending or 0
            self._lag = total
            await asyncio.sleep(LAG_EVERY_S)

    async def stop(self) -> None:
        """Drain: stop taking work, finish and ack what was taken, hand the partitions back.
        The leases stay renewed and the taken messages marked in progress while the partitions
        drain: a drain longer than the fence would otherwise lose the partitions under it."""
        self._unwatch()
        await asyncio.gather(*(leases.release_all() for leases in self._leases.values()))
        await self._tasks.close()
        subs, self._tombstone_subs = self._tombstone_subs, []
        for sub in subs:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await sub.unsubscribe()
        await self._purges.close()
        if self.owns_stage:
            await self.stage.stop()
        self.log.info("worker_stopped", handled=self.handled)

    async def run_until(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
