"""Partition leases in a JetStream KV bucket whose entries expire (the bucket's ``ttl``).

Each replica of a stage heartbeats a membership key and holds leases on a fair share
(``ceil(partitions / live replicas)``) of the partitions, renewing each with a compare-and-set
update every ``tick_s``. A replica that dies stops renewing; its keys age out after ``ttl`` and live
replicas take the partitions over. A replica over its share (a new one joined) drains a
partition, then deletes the key so another replica can take it at once.

**Fencing.** A lease is only as good as its last renewal: the server may expire the key ``ttl``
after the renewal was *sent*. So a partition whose renewal has not succeeded for
``ttl - fence_margin_s`` is dropped here (``on_fence``: stop pulling, abandon unacked work) before
any other replica can create the key; the fence runs on its own clock, not behind a tick stuck on
a dead connection. A session is never handled by two replicas at once.

**Bus errors** (timeouts, a reconnecting client, a bucket gone) never end the lease task: the tick
is retried with backoff, logged once when the outage starts and once when it ends. A bucket that
disappeared (the server came back with an empty store) is recreated by ``reprovision``.

**Orphans.** Fencing makes a dead or cut-off holder harmless ``ttl - fence_margin_s`` after its
last successful renewal, before the key expires. So each tick also reads the lease keys held by
others; a key whose revision has not changed for that long *on this replica's clock*, counted
from when this replica first saw that revision (which is after its holder sent it), belongs to a
holder that has stopped acting on it. It is taken at once, by compare-and-set on that revision,
even above this replica's share (the shares even out once the dead member's key is gone). A
killed replica's partitions move about ``ttl - fence_margin_s`` after its last renewal instead of
``ttl`` plus a tick.

Membership is counted from the bucket stream's per-subject state (one request, no consumer), and
a leaving replica purges its membership key (no delete marker left to count).
"""

from __future__ import annotations

import asyncio
import math
import time
import zlib
from collections.abc import Awaitable, Callable

import structlog
from nats.js import JetStreamContext
from nats.js.errors import (
    BadRequestError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from voxbus.runtime.tasks import TaskSet
from voxbus.runtime.transient import missing_stream, transient

log = structlog.get_logger("voxbus.leases")

OnChange = Callable[[int], Awaitable[None]]


class Unchanged:
    """How long each watched key has kept its revision, on this replica's clock, counted from
    when its current revision was first seen here (which is after its holder wrote it)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, float]] = {}

    def for_s(self, key: str, revision: int) -> float:
        """Seconds ``key`` has been at ``revision``: 0 when that revision is new here."""
        now = time.monotonic()
        rev, since = self._seen.get(key, (None, now))
        if rev != revision:
            self._seen[key] = (revision, now)
            return 0.0
        return now - since

    def forget(self, key: str) -> None:
        self._seen.pop(key, None)

    def keep_only(self, keys: set[str]) -> None:
        for key in set(self._seen) - keys:
            del self._seen[key]

    def clear(self) -> None:
        self._seen.clear()
Reprovision = Callable[[], Awaitable[KeyValue]]


class PartitionLeases:
    def __init__(
        self,
        kv: KeyValue,
        js: JetStreamContext,
        *,
        bucket: str,
        stage: str,
        replica: str,
        partitions: int,
        ttl_s: float,
        on_acquire: OnChange,
        on_release: OnChange,
        on_fence: OnChange,
        reprovision: Reprovision | None = None,
        tick_s: float = 1.0,
        fence_margin_s: float = 0.5,
    ) -> None:
        if not 0 < fence_margin_s < ttl_s:
            raise ValueError(f"fence margin {fence_margin_s}s must be inside the ttl {ttl_s}s")
        if tick_s >= ttl_s - fence_margin_s:
            raise ValueError(f"lease tick {tick_s}s leaves no renewal before the fence "
                             f"({ttl_s - fence_margin_s}s)")
        self._kv = kv
        self._js = js
        self._bucket = bucket
        self._stage = stage
        self._replica = replica
        self._value = replica.encode()
        self._partitions = partitions
        self._on_acquire = on_acquire
        self._on_release = on_release
        self._on_fence = on_fence
        self._reprovision = reprovision
        self.tick_s = tick_s
        self.ttl_s = ttl_s
        self.fence_after_s = ttl_s - fence_margin_s
        self.held: dict[int, int] = {}  # partition -> KV revision of our lease
        self.renewed: dict[int, float] = {}  # partition -> monotonic time its renewal was sent
        self._releasing: set[int] = set()
        self._fencing: set[int] = set()
        self._drains = TaskSet(f"leases-{stage}")
        self._outage_since: float | None = None
        # No partition is taken before this (see ``hold_off``).
        self._hold_off_until = 0.0
        self.fenced = 0  # partitions dropped because their lease could not be renewed
        #: Set by ``release_all``: renew what is held (it is being drained), take nothing more.
        self.leaving = False
        #: When the bus last came back (``Worker`` tells us): see ``_tick_safely``.
        self.reconnected_at = 0.0
        #: Other replicas' lease and membership keys, by how long each kept its revision.
        self._unchanged = Unchanged()
        #: A member whose key has not changed this long is not counted (it renews every tick).
        self.member_stale_s = min(self.fence_after_s, 2.5 * tick_s)
        #: When a tick last ended (well or not) and last went well; live replicas counted then.
        self.last_tick_at = 0.0
        self.last_ok_at = 0.0
        self.members = 1
        self.log = log.bind(stage=stage, replica=replica, bucket=bucket)

    def _key(self, p: int) -> str:
        return f"{self._stage}.p{p}"

    def _member_key(self) -> str:
        return f"{self._stage}.m.{self._replica}"

    def _subject(self, key: str) -> str:
        return f"$KV.{self._bucket}.{key}"

    def valid(self, p: int) -> bool:
        """Whether we still own ``p`` for certain: checked before handling each message and
        before each publish, so a replica that was frozen (or cut off) acts on nothing it may
        have lost, even before its fence loop runs again."""
        sent = self.renewed.get(p)
        return sent is not None and time.monotonic() - sent < self.fence_after_s

    async def _members(self) -> int:
        """Replicas alive: membership keys present, less those not renewed for a few ticks on
        our clock (a killed member's key lingers until the ttl; counting it would make the
        survivors give back the partitions they took over)."""
        info = await self._js.stream_info(
            f"KV_{self._bucket}", subjects_filter=self._subject(f"{self._stage}.m.*")
        )
        ours = self._subject(self._member_key())
        others = [subj for subj in info.state.subjects or {} if subj != ours]
        keys = [subj.removeprefix(f"$KV.{self._bucket}.") for subj in others]
        stale = await asyncio.gather(*(self._member_stale(key) for key in keys))
        self._unchanged.keep_only({*keys, *(self._key(p) for p in range(self._partitions))})
        return 1 + sum(1 for gone in stale if not gone)

    async def _member_stale(self, key: str) -> bool:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return True
        if entry.revision is None:
            return True
        return self._unchanged.for_s(key, entry.revision) >= self.member_stale_s

    # ---- renewing, taking, giving back ---------------------------------------------------------

    async def _renew(self, p: int, rev: int) -> None:
        sent = time.monotonic()
        try:
            new_rev = await self._kv.update(self._key(p), self._value, last=rev)
        except KeyWrongLastSequenceError:
            # Our previous renewal may have landed after its request timed out: if the key still
            # names us, adopt its revision; otherwise another replica has it.
            try:
                entry = await self._kv.get(self._key(p))
            except KeyNotFoundError:
                entry = None
            if entry is None or entry.value != self._value or entry.revision is None:
                await self._lost(p)
                return
            try:
                new_rev = await self._kv.update(self._key(p), self._value, last=entry.revision)
            except (KeyWrongLastSequenceError, KeyNotFoundError):
                await self._lost(p)
                return
        except KeyNotFoundError:
            await self._lost(p)
            return
        if p in self.held:  # not fenced while the request was in flight
            self.held[p] = new_rev
            self.renewed[p] = sent

    def hold_off(self) -> None:
        """The connection dropped: the server may come back with an empty store, where a free
        key proves nothing, since its owner may still believe in it until its fence runs out.
        Keys that vanish otherwise are released (their owner stopped first) or expired (after
        the ttl, so past the fence), so this is the one case that needs waiting."""
        self._hold_off_until = max(self._hold_off_until, time.monotonic() + self.fence_after_s)
        self._unchanged.clear()  # what we saw before the drop says nothing about the keys after

    async def _lost(self, p: int) -> None:
        if self.held.pop(p, None) is None:
            return
        self.renewed.pop(p, None)
        self.log.warning("lease_lost", partition=p)
        if p not in self._releasing:
            # Dropped in its own task: a tick that finds every key gone (an empty store) must
            # not run sixteen partitions' abandon in line, past its own timeout, which would
            # cancel one of them half-way.
            self._fencing.add(p)
            self._drains.spawn(self._fence(p), name=f"lost-p{p}")

    async def _fence(self, p: int) -> None:
        try:
            await self._on_fence(p)
        finally:
            self._fencing.discard(p)

    async def _acquire(self, want: int) -> None:
        if time.monotonic() < self._hold_off_until:
            return
        start = zlib.crc32(self._value) % self._partitions
        for i in range(self._partitions):
            if want <= 0:
                return
            p = (start + i) % self._partitions
            if p in self.held or p in self._fencing:
                continue
            sent = time.monotonic()
            try:
                rev = await self._kv.create(self._key(p), self._value)
            except KeyNotFoundError:
                # the key was there, then aged out while the client looked at why the create
                # failed (nats-py's create reads it): free now, taken on a later tick
                continue
            except KeyWrongLastSequenceError:
                adopted = await self._adopt(p)
                if adopted is None:
                    continue
                rev = adopted
            self.held[p], self.renewed[p] = rev, sent
            self.log.info("lease_acquired", partition=p)
            await self._on_acquire(p)
            want -= 1

    async def _observe(self, p: int) -> tuple[int, float] | None:
        """Read another replica's lease on ``p``: the revision to take it over with and how long
        we have seen it unchanged, if its holder has stopped acting on it (fenced or dead)."""
        key = self._key(p)
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            self._unchanged.forget(key)
            return None
        if entry.revision is None or entry.value == self._value:
            self._unchanged.forget(key)
            return None
        unchanged_s = self._unchanged.for_s(key, entry.revision)
        return (entry.revision, unchanged_s) if unchanged_s >= self.fence_after_s else None

    async def _take_orphans(self) -> None:
        """Take the partitions whose holders have stopped renewing (see the module's doc)."""
        if time.monotonic() < self._hold_off_until:
            return
        others = [p for p in range(self._partitions) if p not in self.held
                  and p not in self._fencing]
        seen = await asyncio.gather(*(self._observe(p) for p in others))
        for p, orphan in zip(others, seen, strict=True):
            if orphan is None or p in self.held:
                continue
            rev, unchanged_s = orphan
            sent = time.monotonic()
            try:
                new_rev = await self._kv.update(self._key(p), self._value, last=rev)
            except (KeyWrongLastSequenceError, KeyNotFoundError):
                continue  # renewed after all, or taken by another survivor first
            self._unchanged.forget(self._key(p))
            self.held[p], self.renewed[p] = new_rev, sent
            self.log.warning("lease_orphan_taken", partition=p,
                             unchanged_s=round(unchanged_s, 2))
            await self._on_acquire(p)

    async def _adopt(self, p: int) -> int | None:
        """Take back a key that still names us (we fenced ourselves, and it has not expired
        yet: nobody else can have it), so work resumes without waiting for the ttl."""
        try:
            entry = await self._kv.get(self._key(p))
        except KeyNotFoundError:
            return None
        if entry.value != self._value or entry.revision is None:
            return None
        try:
            return await self._kv.update(self._key(p), self._value, last=entry.revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            return None

    async def release(self, p: int) -> None:
        """Drain partition ``p`` (the lease is kept fresh meanwhile), then give it up."""
        if p not in self.held:
            return
        self._releasing.add(p)
        try:
            await self._on_release(p)
        finally:
            self._releasing.discard(p)
            rev = self.held.pop(p, None)
            self.renewed.pop(p, None)
        if rev is not None:
            await self._delete_if_ours(self._key(p))
        self.log.info("lease_released", partition=p)

    async def _delete_if_ours(self, key: str) -> None:
        """Delete our lease key, unless another replica holds it by now."""
        try:
            entry = await self._kv.get(key)
            if entry.value == self._value and entry.revision is not None:
                await self._kv.delete(key, last=entry.revision)
        except (KeyNotFoundError, KeyWrongLastSequenceError, BadRequestError):
            pass
        except Exception as e:  # noqa: BLE001 - the key ages out anyway
            if not transient(e):
                raise
            self.log.warning("lease_release_unconfirmed", key=key, error=repr(e))

    # ---- health ---------------------------------------------------------------------------

    def liveness(self) -> str | None:
        """The lease loop still ticks (a stopped one holds nothing and never will again)."""
        if not self.last_tick_at:
            return None  # not started yet: readiness says so
        stalled = time.monotonic() - self.last_tick_at
        return f"lease loop stalled {stalled:.0f} s" if stalled > max(10.0, 10 * self.tick_s) \
            else None

    def readiness(self) -> str | None:
        """Renewed lately, and holding a partition unless replicas outnumber partitions."""
        if not self.last_ok_at:
            return "no lease tick yet"
        if time.monotonic() - self.last_ok_at > self.fence_after_s:
            return "leases not renewed lately (bus unreachable?)"
        if not self.held and self.members <= self._partitions:
            return "holds no partition yet"
        return None

    # ---- the loops ----------------------------------------------------------------------------

    async def tick(self) -> None:
        if self.leaving:  # draining: renew what we drain, and no longer count as a member
            await self._renew_all()
            return
        await self._kv.put(self._member_key(), b"1")
        await self._renew_all()
        await self._take_orphans()
        self.members = await self._members()
        share = math.ceil(self._partitions / self.members)
        keeping = [p for p in sorted(self.held) if p not in self._releasing]
        if len(keeping) > share:
            for p in keeping[share:]:
                self._releasing.add(p)
                self._drains.spawn(self.release(p), name=f"drain-p{p}")
        elif len(self.held) < share:
            await self._acquire(share - len(self.held))

    async def _renew_all(self) -> None:
        """Every held lease at once: on a replicated bucket each renewal is a raft round, and
        sixteen in a row could outlast the fence on a busy machine."""
        results = await asyncio.gather(
            *(self._renew(p, rev) for p, rev in list(self.held.items())), return_exceptions=True)
        for r in results:  # all done first: the tick's error handling sees one of them
            if isinstance(r, BaseException):
                raise r

    async def check_fences(self) -> None:
        """Drop every partition whose lease may expire before we could renew it."""
        now = time.monotonic()
        for p, sent in list(self.renewed.items()):
            if now - sent < self.fence_after_s or p in self._fencing:
                continue
            self._fencing.add(p)
            self.held.pop(p, None)
            self.renewed.pop(p, None)
            self.fenced += 1
            self.log.warning("lease_fenced", partition=p, unrenewed_s=round(now - sent, 2))
            await self._fence(p)

    async def _fence_loop(self) -> None:
        while True:
            await asyncio.sleep(min(0.1, self.tick_s / 2))
            await self.check_fences()

    async def _tick_safely(self) -> None:
        try:
            # A tick never outlives the fence: a renewal stuck on a dead link is abandoned.
            await asyncio.wait_for(self.tick(), timeout=self.fence_after_s)
        except (KeyNotFoundError, KeyWrongLastSequenceError) as e:
            # a key changed under a step of the tick (it aged out, another replica took it):
            # the next tick starts from what the bucket holds then; the loop must go on
            self.log.warning("lease_tick_raced", error=repr(e), held=len(self.held))
            return
        except Exception as e:  # noqa: BLE001 - classified below
            if not transient(e):
                raise
            # While the bus is away nobody can renew: a key unchanged meanwhile proves nothing
            # about its holder, so what we saw is forgotten and watching starts again after.
            self._unchanged.clear()
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                self.log.warning("lease_bus_error", error=repr(e), held=len(self.held))
            # A store that came back empty usually answers "not found" (or nobody answers), but
            # a tick can also keep timing out on it: once the connection has come back during
            # the outage and a few ticks still failed, provisioning is asked for too
            # (idempotent; a server that is only frozen never reconnects).
            stuck = (self.reconnected_at >= self._outage_since
                     and time.monotonic() - self._outage_since >= 4 * self.tick_s)
            if self._reprovision is not None and (missing_stream(e) or stuck):
                try:
                    self._kv = await self._reprovision()
                except Exception as again:  # noqa: BLE001 - tried again next tick
                    if not transient(again) and not missing_stream(again):
                        raise
            return
        self.last_ok_at = time.monotonic()
        if self._outage_since is not None:
            self.log.info("lease_bus_recovered",
                          outage_s=round(time.monotonic() - self._outage_since, 2),
                          held=len(self.held))
            self._outage_since = None

    async def run(self) -> None:
        fences = TaskSet(f"fences-{self._stage}")
        fences.spawn(self._fence_loop(), name=f"fence-{self._stage}")
        try:
            while True:
                try:
                    await self._tick_safely()
                except Exception:  # noqa: BLE001 - a worker without its lease loop is a zombie
                    self.log.exception("lease_tick_failed", held=len(self.held))
                self.last_tick_at = time.monotonic()
                # In an outage the tick is retried every half tick: the bus's reconnect does
                # the backing off, and work resumes within a tick of the bus coming back.
                await asyncio.sleep(self.tick_s if self._outage_since is None else self.tick_s / 2)
        finally:
            await fences.close()

    async def release_all(self) -> None:
        """Drain and give back every partition (the lease loop keeps renewing them meanwhile,
        if it runs), then leave the membership."""
        self.leaving = True
        await self._drains.close()
        await asyncio.gather(*(self.release(p) for p in sorted(self.held)))
        try:
            # a purge marker, published on our own key: an identity may not purge the stream
            await self._kv.purge(self._member_key())
        except Exception as e:  # noqa: BLE001 - the membership key ages out anyway
            if not transient(e):
                raise
            self.log.warning("membership_not_removed", error=repr(e))

