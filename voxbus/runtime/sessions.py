"""The runtime's sessions: for one partition of one region, each session's lane, its stage
handler and scope, admission to the worker, the publish path, ack and the failure rules.

Nothing here talks to NATS itself: ``worker`` feeds it JetStream deliveries, ``testing`` in-memory
ones; state goes through the stage bus's KV.

- **Admission.** A session's handler is opened (``Stage.open``) once the worker has a place for
  it (``SessionPolicy.max_sessions``, shared by the worker's partitions). Until then, and
  whenever its lane is full, the session's messages are handed back to JetStream with a short
  delay (``nak``) instead of waiting in front of the partition: the other sessions of the
  partition go on. A later message of the session never overtakes one handed back
  (``Outstanding``), so order holds. After ``admit_timeout_s`` of waiting its messages are
  refused (``term``, one ``<stage>_busy`` error event) until a place is free.
- **Publishing.** Yielded messages and late ones (``SessionScope.publish``) go through one path:
  dropped if their turn was interrupted, published with trace context.
- **Closing.** A session is closed when idle (``idle_close_s`` without a message and the handler
  not ``busy``), when its handler calls ``SessionScope.release`` (it reopens on the next
  message), or when the partition is drained.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from nats.js.errors import KeyNotFoundError

from voxbus.contracts import control
from voxbus.contracts.messages import Interrupt
from voxbus.runtime import metrics, tracing
from voxbus.runtime.closing import OUTCOME_ACK, Ack, CloseReason, Outcome, settle
from voxbus.runtime.lanes import Delivery, Lane, Outstanding, RecentKeys
from voxbus.runtime.scope import SessionScope
from voxbus.runtime.stage import (
    BadInput,
    Context,
    Retryable,
    SessionHandler,
    Stage,
    StageBus,
)
from voxbus.runtime.tasks import TaskSet
from voxbus.runtime.transient import transient

log = structlog.get_logger("voxbus.sessions")


@dataclass(frozen=True, kw_only=True)
class LaneOptions:
    lane_queue: int = 256
    max_deliver: int = 5
    retry_backoff_s: float = 0.2
    defer_base_s: float = 0.05  # first hand-back delay; doubles per delivery
    defer_max_s: float = 1.0
    recent_keys: int = 2048  # handled messages remembered, to drop redelivered copies
    bus_retry_s: float = 15.0  # a handler failing on a bus outage is retried this long


@dataclass
class SessionStats:
    handled: int = 0
    deferred: int = 0  # handed back to JetStream (not admitted yet, or lane full)
    refused: int = 0  # terminated: not admitted within admit_timeout_s
    redeliveries_dropped: int = 0  # copies of messages handled or held already
    opened: int = 0
    closed: int = 0
    started: int = 0  # messages handed to a handler


class Admission:
    """Places for sessions with an open handler in one worker (0: no limit), and who holds
    them (for eviction: ``quietest``)."""

    RESERVE_S = 3.0  # a place freed for a session waits this long for it

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0  # places taken now
        self.holders: dict[int, tuple[SessionLanes, Session]] = {}
        #: Places being freed (a quiet session evicted) for the session that needed one:
        #: (region, session) -> until when. Nobody else takes them meanwhile.
        self.reserved: dict[tuple[str, str], float] = {}

    def try_take(self, who: tuple[str, str] = ("", "")) -> bool:
        if not self.limit:
            self.taken += 1
            return True
        now = time.monotonic()
        for key in [k for k, until in self.reserved.items() if until < now]:
            del self.reserved[key]
        mine = self.reserved.pop(who, None) is not None
        if self.taken + len(self.reserved) >= self.limit and not (
            mine and self.taken < self.limit
        ):
            if mine:  # not free yet (the evicted session is closing): keep it for us
                self.reserved[who] = now + self.RESERVE_S
            return False
        self.taken += 1
        return True

    def reserve(self, who: tuple[str, str]) -> None:
        self.reserved[who] = time.monotonic() + self.RESERVE_S

    def give(self) -> None:
        self.taken = max(0, self.taken - 1)

    def quietest(self, now: float, min_quiet_s: float, unheard_quiet_s: float | None = None,
                 ) -> tuple[SessionLanes, Session] | None:
        """The holder to make room: an ``unheard`` one quiet for ``unheard_quiet_s`` first,
        else the one without a message for longest, if at least ``min_quiet_s``; idle ones
        only (0 for ``min_quiet_s``: none but the unheard)."""
        best: tuple[SessionLanes, Session] | None = None
        best_rank: tuple[int, float] = (2, 0.0)
        for lanes, sess in self.holders.values():
            if sess.busy() or sess.evicting:
                continue
            unheard = unheard_quiet_s is not None and sess.unheard()
            need = unheard_quiet_s if unheard and unheard_quiet_s is not None else min_quiet_s
            if not unheard and not min_quiet_s:
                continue
            quiet = now - sess.last_seen
            lane = sess.lane
            if quiet < need or (lane is not None and lane.idle_for(now) < need):
                continue
            rank = (0 if unheard else 1, sess.last_seen)
            if rank < best_rank:
                best, best_rank = (lanes, sess), rank
        return best


#: Outcomes after which a redelivered copy of the message is acked and dropped.
_DONE = frozenset({Outcome.HANDLED, Outcome.HANDLED_HELD, Outcome.SKIPPED, Outcome.PURGED,
                   Outcome.REJECTED})


@dataclass
class _Visit:
    """A handler opened for one urgent message of a session not admitted, closed after it."""

    handler: SessionHandler | None = None


class Session:
    def __init__(self, scope: SessionScope) -> None:
        self.scope = scope
        self.id = scope.session
        self.lane: Lane | None = None
        self.handler: SessionHandler | None = None
        self.admitted = False
        self.waiting_since: float | None = None
        self.refusing = False
        self.outstanding = Outstanding()
        self.last_seen = time.monotonic()
        self.evicting = False
        #: Its tombstone and interrupt watermark were read (once per session here: afterwards
        #: this worker's memory is current, fed by the purge notices and the interrupts).
        self.state_loaded = False

    def busy(self) -> bool:
        return bool(getattr(self.handler, "busy", False))

    def unheard(self) -> bool:
        """The handler holds nothing worth a place (``SessionPolicy.evict_unheard_s``)."""
        return bool(getattr(self.handler, "unheard", False))


class SessionLanes:
    """The sessions of one partition of one region, for one stage."""

    def __init__(
        self, stage: Stage, bus: StageBus, region: str, *, admission: Admission,
        opts: LaneOptions | None = None, stats: SessionStats | None = None, name: str = "",
        owned: Callable[[], bool] = lambda: True, tombstones: RecentKeys | None = None,
    ) -> None:
        self.stage = stage
        self._owned = owned
        #: Sessions purged (shared by a worker's partitions of the region): their messages are
        #: acked and dropped, never handled.
        self.tombstones = tombstones if tombstones is not None else RecentKeys(4096)
        self.bus = bus
        self.region = region
        self.admission = admission
        self.opts = opts or LaneOptions()
        self.stats = stats or SessionStats()
        self.sessions: dict[str, Session] = {}
        self._done = RecentKeys(self.opts.recent_keys)
        self._tasks = TaskSet(name or f"sessions-{stage.name}-{region}")

    # ---- arriving messages ----------------------------------------------------------------------

    async def deliver(self, d: Delivery) -> None:
        """An input message: into its session's lane, or back to JetStream for later. Never
        waits for the session (only for the ack/nak round trip)."""
        if await self._purged(d):
            return
        sess = self._session(d.msg.session)
        if d.inbound.num_delivered > 1:
            metrics.REDELIVERIES.add(1, {"stage": self.stage.name})
            if await self._duplicate(d, sess):
                return
        if sess.outstanding.blocks(d.key):
            await self._defer(sess, d)
            return
        if not sess.admitted and not await self._admit(sess, d):
            return
        lane = sess.lane
        assert lane is not None
        if lane.queue.full():
            await self._defer(sess, d)
            return
        sess.outstanding.discard(d.key)
        lane.queue.put_nowait(d)

    async def urgent(self, d: Delivery) -> None:
        """An urgent message (an interrupt): handled at once, beside the session's lane."""
        if await self._purged(d):
            return
        sess = self._session(d.msg.session)
        if isinstance(d.msg, Interrupt):
            ledger = sess.scope.ledger
            if d.msg.turn > ledger.interrupted:
                ledger.interrupt(d.msg.turn)
                await self._save_watermark(sess)
            if sess.lane is not None:
                sess.lane.cut_stale()
        await self._process(sess, d, urgent=True)

    def _session(self, session: str) -> Session:
        sess = self.sessions.get(session)
        if sess is None:
            scope = SessionScope(bus=self.bus, region=self.region, session=session,
                                 stage=self.stage.name, owned=self._owned)
            sess = self.sessions[session] = Session(scope)
        sess.last_seen = time.monotonic()
        return sess

    # ---- purged sessions ----------------------------------------------------------------------

    async def _purged(self, d: Delivery) -> bool:
        """A message of a session purged while this worker ran: acked and dropped. (No await
        before that: a message must not overtake an earlier one of its session here.)"""
        if d.msg.session not in self.tombstones:
            return False
        await self._settle(d, Outcome.PURGED)
        return True

    async def purge(self, session: str) -> None:
        """The session is being purged: publish nothing more for it, stop its work now, and
        drop what it holds (acked: nobody is to handle it again)."""
        self.tombstones.add(session)
        sess = self.sessions.get(session)
        if sess is None:
            return
        sess.scope.purged = True
        await self.end(sess, CloseReason.PURGED)
        sess.scope.log.info("session_purged_here")

    # ---- the interrupt watermark ------------------------------------------------------------
    # Kept in the session's state (``<session>.interrupted``, expiring with the bucket, erased by
    # a purge), so it is bounded by the sessions alive and survives a takeover.

    def _watermark_key(self, session: str) -> str:
        return control.state_key(session, control.INTERRUPTED_STATE)

    async def _save_watermark(self, sess: Session) -> None:
        try:
            kv = await self.bus.state(self.region)
            await kv.put(self._watermark_key(sess.id), str(sess.scope.ledger.interrupted).encode())
        except Exception as e:  # noqa: BLE001 - this replica still knows; only a takeover won't
            sess.scope.log.warning("interrupt_not_saved", error=repr(e))

    async def _state(self, key: str) -> tuple[bool, bytes | None]:
        """(read, value) of one key of the state bucket; (True, None) when it is not there."""
        try:
            kv = await self.bus.state(self.region)
            return True, (await kv.get(key)).value
        except KeyNotFoundError:
            return True, None
        except Exception as e:  # noqa: BLE001 - the bus is away: read again at the next opening
            log.warning("session_state_not_read", key=key, error=repr(e))
            return False, None

    async def _load_state(self, sess: Session) -> bool:
        """Before a session's handler opens: its tombstone (purged before this worker saw it:
        False, and its messages are dropped from then on) and its interrupt watermark (set by
        another replica). Read in the session's lane, so order holds, and both at once."""
        if sess.state_loaded:
            return True
        (t_read, tombstone), (w_read, watermark) = await asyncio.gather(
            self._state(control.tombstone_key(sess.id)), self._state(self._watermark_key(sess.id)))
        sess.state_loaded = t_read and w_read
        if tombstone is not None:
            self.tombstones.add(sess.id)
            return False
        stored = int(watermark) if watermark and watermark.isdigit() else 0
        if stored > sess.scope.ledger.interrupted:
            sess.scope.ledger.interrupt(stored)
        return True

    async def _duplicate(self, d: Delivery, sess: Session) -> bool:
        """A redelivered copy of a message handled already, or still queued in the lane: JetStream
        redelivers when an ack is late, and handling the copy too would feed the stage the same
        input twice (a repeated audio frame changes what the STT hears). A copy of a handled
        message is acked; a copy of a held or queued one is dropped and the one we have marked in
        progress."""
        kept = sess.scope.held.get(d.key)
        if kept is not None:  # handled and held unacked on purpose: still ours
            kept.touched = time.monotonic()
            await kept.inbound.in_progress()
        elif d.key in self._done:
            await d.inbound.ack()
        elif sess.lane is not None and (queued := sess.lane.find(d.key)) is not None:
            queued.touched = time.monotonic()
            await queued.inbound.in_progress()
        else:
            return False  # handed back by us, taken over from another replica, or never handled
        self.stats.redeliveries_dropped += 1
        log.info("redelivery_dropped", subject=d.subject, session=d.msg.session,
                 stream_seq=d.key[1])
        return True

    async def _admit(self, sess: Session, d: Delivery) -> bool:
        if self.admission.try_take((self.region, sess.id)):
            self.admission.holders[id(sess)] = (self, sess)
            sess.admitted, sess.waiting_since, sess.refusing = True, None, False
            lane = Lane(sess.id, process=lambda x: self._process(sess, x), skip=self._skip,
                        maxsize=self.opts.lane_queue, on_exit=lambda _lane: None,
                        ledger=sess.scope.ledger)
            sess.lane = lane
            lane.task = self._tasks.spawn(lane.run(), name=f"lane-{sess.id}")
            metrics.SESSIONS.add(1, {"stage": self.stage.name})
            return True
        self._evict_for(sess)
        now = time.monotonic()
        if sess.waiting_since is None:
            sess.waiting_since = now
            sess.scope.log.info("session_waiting", sessions=self.admission.taken,
                                limit=self.admission.limit)
        if now - sess.waiting_since < self.stage.policy.admit_timeout_s:
            await self._defer(sess, d)
            return False
        sess.outstanding.discard(d.key)
        await self._settle(d, Outcome.REFUSED)
        self.stats.refused += 1
        if not sess.refusing:
            sess.refusing = True
            code = f"{self.stage.name}_busy"
            sess.scope.log.warning("session_refused", sessions=self.admission.taken)
            await self.bus.publish_error(
                self.region, sess.id, turn=d.msg.turn, code=code, stage=self.stage.name,
                message=f"this {self.stage.name} worker already holds {self.admission.limit} "
                        "sessions", source_subject=d.subject,
            )
        answer = getattr(self.stage, "refused", None)  # the stage may close what it refused
        if answer is not None:
            for out in answer(d.msg):
                await self.bus.publish(self.region, out)
        return False

    def _evict_for(self, sess: Session) -> None:
        """Every place is taken and ``sess`` has input: close the session quiet the longest,
        if one has been quiet for ``evict_idle_s`` (its place is free by the time the message,
        handed back meanwhile, comes again)."""
        policy = self.stage.policy
        quiet_s = policy.evict_idle_s
        if (not quiet_s and not policy.evict_unheard_s) or (
                (self.region, sess.id) in self.admission.reserved):
            return  # never evicting, or a place is being freed for it already
        victim = self.admission.quietest(time.monotonic(), quiet_s, policy.evict_unheard_s)
        if victim is None:
            return
        lanes, quiet = victim
        quiet.evicting = True
        quiet.scope.log.info("session_evicted", quiet_s=round(time.monotonic() -
                                                              quiet.last_seen, 1),
                             for_session=sess.id)
        self.admission.reserve((self.region, sess.id))
        lanes._tasks.spawn(lanes.end(quiet, CloseReason.EVICTED), name=f"evict-{quiet.id}")

    async def _defer(self, sess: Session, d: Delivery) -> None:
        sess.outstanding.add(d.key)
        o = self.opts
        delay = min(o.defer_max_s, o.defer_base_s * 2 ** min(10, d.inbound.num_delivered - 1))
        await self._settle(d, Outcome.DEFERRED, hand_back_s=delay)
        self.stats.deferred += 1

    # ---- handling -------------------------------------------------------------------------------
    # Each message's handling ends in one ``closing.Outcome``, and ``closing.OUTCOME_ACK`` says what
    # that does to the message: ``_process`` finds the handler, runs it (retrying what is worth
    # retrying), then settles the message by that table.

    async def _settle(self, d: Delivery, outcome: Outcome, sess: Session | None = None, *,
                      hand_back_s: float = 0.1) -> None:
        ack = OUTCOME_ACK[outcome]
        if ack is Ack.HOLD:
            assert sess is not None
            sess.scope.held[d.key] = d
        else:
            await settle(d.inbound, ack, hand_back_s=hand_back_s)
        if outcome in _DONE:
            self._done.add(d.key)

    async def _skip(self, d: Delivery) -> None:
        """A message of an interrupted turn: acknowledged without work."""
        await self._settle(d, Outcome.SKIPPED)

    async def _open(self, sess: Session) -> SessionHandler:
        handler = await self.stage.open(sess.scope)
        self.stats.opened += 1
        return handler

    async def _process(self, sess: Session, d: Delivery, *, urgent: bool = False) -> None:
        """Handle one message of the session (in its lane, or at once if ``urgent``)."""
        if not urgent:
            sess.scope.release_requested = False  # a release asked before this message is void
        visit = _Visit()
        try:
            outcome, error = await self._handle(sess, d, urgent, visit)
        finally:
            if visit.handler is not None:
                await self._close_handler(sess, visit.handler, CloseReason.VISITED)
        await self._settle(d, outcome, sess)
        if error is not None:
            code, message = error
            log.warning("message_rejected", stage=self.stage.name, code=code, subject=d.subject,
                        session=d.msg.session, error=message)
            await self.bus.publish_error(
                self.region, d.msg.session, turn=d.msg.turn, code=code, message=message,
                stage=self.stage.name, source_subject=d.subject,
            )
        if sess.scope.release_requested and sess.admitted and sess.handler is not None:
            lane = sess.lane
            if lane is not None and lane.queue.empty():
                self._tasks.spawn(self.end(sess, CloseReason.RELEASED),
                                  name=f"release-{sess.id}")

    async def _handle(
        self, sess: Session, d: Delivery, urgent: bool, visit: _Visit
    ) -> tuple[Outcome, tuple[str, str] | None]:
        """Attempts at handling ``d`` until one ends: (outcome, (error code, message) if it was
        rejected). A ``Retryable`` is tried again up to ``max_deliver`` times; a bus outage (a
        transient error) for ``bus_retry_s``; bad input and other failures are rejected."""
        msg = d.msg
        ctx = Context(bus=self.bus, region=self.region, session=msg.session, subject=d.subject,
                      headers=d.inbound.headers, turn=msg.turn, stage=self.stage.name)
        started = time.monotonic()
        while True:
            try:
                return await self._attempt(sess, d, ctx, urgent, visit), None
            except Retryable as e:
                if ctx.attempt >= self.opts.max_deliver:
                    return Outcome.REJECTED, ("retries_exhausted", str(e))
                ctx.log.warning("retrying", attempt=ctx.attempt, error=str(e))
                await asyncio.sleep(self.opts.retry_backoff_s * 2 ** (ctx.attempt - 1))
                ctx.attempt += 1
            except BadInput as e:
                return Outcome.REJECTED, (e.code, str(e))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if transient(e) and time.monotonic() - started < self.opts.bus_retry_s:
                    # the bus is away for a moment (a KV read timed out, a reconnect): the
                    # message is handled again once it is back, in its lane, in order
                    ctx.log.warning("bus_retry", attempt=ctx.attempt, error=repr(e))
                    await asyncio.sleep(min(1.0, self.opts.retry_backoff_s * ctx.attempt))
                    ctx.attempt += 1
                    continue
                ctx.log.exception("handler_failed", subject=d.subject)
                return Outcome.REJECTED, ("internal", f"{type(e).__name__}: {e}")

    async def _attempt(
        self, sess: Session, d: Delivery, ctx: Context, urgent: bool, visit: _Visit
    ) -> Outcome:
        """One attempt: the session's handler (opened if needed), then the message through it."""
        handler = sess.handler if sess.handler is not None else visit.handler
        if handler is None:
            if not await self._load_state(sess):
                return Outcome.PURGED  # dropped, never handled
            if urgent and not sess.admitted:  # beside admission: a short visit
                handler = visit.handler = await self._open(sess)
            else:
                handler = sess.handler = await self._open(sess)
        self.stats.started += 1
        if self.stats.started == 1:  # a cold start ends here (bench coldstart)
            log.info("first_message_started", stage=self.stage.name, kind=type(d.msg).__name__)
        started = time.monotonic()
        await self._traced(handler, sess, d, ctx)
        if not sess.scope.owned:
            # the lease went during the handler, which then published nothing more: back to
            # JetStream, for the next owner to handle again
            return Outcome.LEASE_LOST
        self.stats.handled += 1
        if self.stats.handled == 1:  # cold start ends here (bench coldstart)
            log.info("first_message_handled", stage=self.stage.name, kind=type(d.msg).__name__,
                     handle_ms=round((time.monotonic() - started) * 1000, 1))
        return Outcome.HANDLED_HELD if ctx.held else Outcome.HANDLED

    async def _traced(
        self, handler: SessionHandler, sess: Session, d: Delivery, ctx: Context
    ) -> None:
        if not self.bus.tracing:
            await self._run_handler(handler, sess, d, ctx)
            return
        msg = d.msg
        with tracing.tracer().start_as_current_span(
            f"{self.stage.name} {type(msg).__name__}",
            context=tracing.parent_for(msg, d.inbound.headers),
            kind=tracing.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": d.subject,
                "messaging.message.conversation_id": msg.session,
                "voxbus.turn": msg.turn,
                "voxbus.stage": self.stage.name,
            },
        ):
            await self._run_handler(handler, sess, d, ctx)

    async def _run_handler(
        self, handler: SessionHandler, sess: Session, d: Delivery, ctx: Context
    ) -> None:
        gen = handler.handle(d.msg, ctx)
        interrupt = isinstance(d.msg, Interrupt)
        try:
            async for out in gen:
                if not sess.scope.owned or (sess.scope.stale(out) and not interrupt):
                    ctx.log.info("stale_output_dropped", out_turn=out.turn)
                    break
                await self.bus.publish(self.region, out)
        finally:
            aclose = getattr(gen, "aclose", None)
            if aclose is not None:  # an async generator: run its cleanup now
                await aclose()

    # ---- closing (``closing.CLOSE_RULES`` says what each reason does) --------------------------

    async def _close_handler(
        self, sess: Session, handler: SessionHandler, reason: CloseReason
    ) -> None:
        try:
            await handler.close(reason)
        except Exception:  # noqa: BLE001 - one session's close must not stop the others
            sess.scope.log.exception("session_close_failed", reason=str(reason))
        self.stats.closed += 1

    def _came_back(self, sess: Session, reason: CloseReason) -> bool:
        """A close that waits for quiet finds the session in use again (a message came in
        between the decision and now: it is handled here, in order)."""
        lane = sess.lane
        working = lane is not None and (lane.current is not None or not lane.queue.empty())
        if reason is CloseReason.RELEASED:
            return not sess.scope.release_requested or lane is None or working
        return working or sess.busy() or self.sessions.get(sess.id) is not sess

    async def end(self, sess: Session, reason: CloseReason) -> None:
        """Close a session here: its lane stops (it must be idle unless the partition is being
        dropped), its handler closes, its place in the worker is freed, and its messages go
        the way ``reason``'s rule says. The session is detached at once (before any wait), so
        a message arriving meanwhile opens it anew."""
        rule = reason.rule
        if rule.only_if_quiet and self._came_back(sess, reason):
            if reason is not CloseReason.RELEASED:
                sess.evicting = False
            return
        if not rule.keep_session and self.sessions.get(sess.id) is sess:
            del self.sessions[sess.id]  # (a released one stays, dormant, with its ledger)
        lane = sess.lane
        handler, sess.handler = sess.handler, None
        admitted, sess.admitted = sess.admitted, False
        sess.lane = None
        tasks, sess.scope.tasks = sess.scope.tasks, TaskSet(sess.scope.tasks.name)
        sess.scope.release_requested = False
        queued = lane.pending() if lane is not None else []
        if lane is not None and lane.task is not None and lane.task is not asyncio.current_task():
            lane.task.cancel()
            await asyncio.gather(lane.task, return_exceptions=True)
        for d in queued:  # cut short (fenced, or a drain ran out of time): settled now, not
            if d.key not in self._done:  # left to an ack timer, so the next owner need not wait
                await settle(d.inbound, rule.queued)
        if handler is not None:
            await self._close_handler(sess, handler, reason)
        await tasks.close()
        await sess.scope.settle_held(rule.held)
        if admitted:
            self.admission.give()
            self.admission.holders.pop(id(sess), None)
        sess.evicting = False
        sess.scope.log.debug("session_closed", reason=str(reason))

    def sweep(self, now: float) -> None:
        """Close sessions idle for ``idle_close_s``; forget waiting ones that went quiet."""
        idle_s = self.stage.policy.idle_close_s
        for sess in list(self.sessions.values()):
            lane = sess.lane
            idle = lane.idle_for(now) if lane is not None else now - sess.last_seen
            if idle < idle_s or sess.busy() or now - sess.last_seen < idle_s:
                continue
            if lane is None and sess.handler is None:
                if not len(sess.outstanding):
                    del self.sessions[sess.id]
                continue
            self._tasks.spawn(self.end(sess, CloseReason.IDLE), name=f"idle-{sess.id}")

    def pending(self) -> list[Delivery]:
        """Messages taken and not acked: the lanes' and those the handlers hold."""
        return [*(d for s in self.sessions.values() if s.lane is not None
                  for d in s.lane.pending()),
                *(d for s in self.sessions.values() for d in s.scope.held.values())]

    async def abandon(self) -> None:
        """Drop every session now, acking nothing more: another replica may own them already."""
        for sess in list(self.sessions.values()):
            sess.scope.fenced = True
        for sess in list(self.sessions.values()):
            await self.end(sess, CloseReason.FENCED)
        await self._tasks.close()

    async def drain(self, timeout_s: float) -> None:
        """Finish and ack what the lanes took, then close every session (``drained``)."""
        lanes = [s.lane for s in self.sessions.values() if s.lane is not None]
        try:
            async with asyncio.timeout(timeout_s):
                for lane in lanes:
                    await lane.drained()
        except TimeoutError:
            log.warning("drain_timeout", stage=self.stage.name, lanes=len(lanes))
        for sess in list(self.sessions.values()):
            await self.end(sess, CloseReason.DRAINED)
        await self._tasks.close()
