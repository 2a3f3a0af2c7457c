"""Erase everything of one session in one region: every stored message of its subjects in the
region's streams and every KV entry under its key prefix. The purge service answers
``PurgeRequested`` on ``voxbus.ops.<region>.purge`` (only the operator identity may publish there:
see ``ops.auth``) with ``PurgeCompleted`` on ``voxbus.ops.<region>.purged``.

A purge is fenced against late writes, so it can run while the session is still live: first a
tombstone (``purged/<session>`` in the state bucket, kept after the erase) and a notice on
``voxbus.<region>.purging``; every worker holding the session stops it at once, publishes
nothing more for it and drops its messages from then on (a worker that opens the session later
finds the tombstone). After a grace longer than a lease's fence (a worker cut off from the
notice has stopped by then too), everything is erased, then completion is reported.

Erased means overwritten on disk, on every replica: each stored message of the session is found
(a direct get by subject, answered inside the region) and deleted with JetStream's erase, which
every replica of the stream applies to its own store; a filtered purge then takes whatever came
in meanwhile. (A plain purge only marks messages deleted: their bytes would stay in the store's
files until the retention age removes whole blocks.) A replicated stream's raft log keeps its
recent entries until the group's next snapshot, which NATS takes every two to three minutes.

That is why the erase is not what makes a purge final: the session's key is. Every personal
payload of the session travels and is stored sealed under its own key (``contracts.sealing``),
which lives in the servers' memory only. The purge erases the key right after the notice, before
anything else: from then on whatever copy of the session is left (a raft log, a superseded KV
revision, a backup of the store taken before) is ciphertext that no key on the bus opens.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js import api as js_api
from nats.js.errors import APIError, NotFoundError

from voxbus.contracts import decode, encode, streams
from voxbus.contracts.control import tombstone_key
from voxbus.contracts.messages import PurgeCompleted, PurgeRequested
from voxbus.contracts.sealing import key_name
from voxbus.contracts.subjects import (
    check_session,
    purge_subject,
    purged_subject,
    stored_session_wildcard,
    tombstone_subject,
)
from voxbus.runtime.bus import Bus
from voxbus.runtime.pull import PullConsumer

log = structlog.get_logger("voxbus.purge")


class PurgeError(RuntimeError):
    pass


#: Erase requests in flight at once per stream.
ERASE_CONCURRENCY = 32


async def _erase(bus: Bus, stream: str, subject_filter: str,
                 progress: Callable[[], Awaitable[None]] | None = None) -> int:
    """Overwrite every stored message of ``stream`` matching ``subject_filter`` (on every
    replica: the delete goes through the stream's raft group); how many."""
    erased, seq = 0, 0
    slots = asyncio.Semaphore(ERASE_CONCURRENCY)
    refused: list[str] = []

    async def erase(n: int) -> None:
        try:
            await bus.js.delete_msg(stream, n)  # no "no_erase": the bytes are overwritten
        except NotFoundError:
            pass  # aged out meanwhile
        except APIError as e:  # a bucket of an older voxbus denies deletes
            refused.append(str(e.description))
        finally:
            slots.release()

    async with asyncio.TaskGroup() as tg:
        while not refused:
            try:
                raw = await bus.js.get_msg(stream, seq + 1, subject=subject_filter, next=True,
                                           direct=True)
            except NotFoundError:
                break
            assert raw.seq is not None
            seq = raw.seq
            await slots.acquire()
            tg.create_task(erase(seq))
            erased += 1
            if progress is not None and erased % 1000 == 0:
                await progress()
    if refused:  # the purge that follows still removes them; their bytes stay on disk
        log.warning("erase_refused", stream=stream, error=refused[0])
        return 0
    return erased


async def _purge_filter(bus: Bus, stream: str, subject_filter: str) -> int:
    req = json.dumps({"filter": subject_filter}).encode()
    resp = json.loads((await bus.nc.request(f"$JS.API.STREAM.PURGE.{stream}", req, 5)).data)
    if "error" in resp:
        raise PurgeError(f"purge of {stream} refused: {resp['error'].get('description')}")
    return int(resp.get("purged", 0))


async def _shred(bus: Bus, bucket: str, session: str) -> int:
    """Erase the session's key (``contracts.sealing``) on every replica of the keys bucket;
    1 where there was one. The bucket lives in the servers' memory only: no disk ever held it."""
    return await _erase(bus, f"KV_{bucket}", f"$KV.{bucket}.{key_name(session)}")


#: From the notice to the erase: longer than a worker takes to stop the session, and than a
#: lease's fence (``ttl - margin``, 1.2 s), after which a worker that missed the notice has
#: stopped publishing for the partition anyway.
GRACE_S = 1.5


async def purge_session(bus: Bus, region: str, session: str, *, grace_s: float = GRACE_S,
                        progress: Callable[[], Awaitable[None]] | None = None
                        ) -> dict[str, int]:
    """Tombstone the session, let its work stop, then erase its messages and state; returns how
    many messages each stream lost. ``progress`` is awaited now and then on a long erase."""
    bus.check_region(region)
    check_session(session)
    kv = await bus.kv(streams.state_bucket(region))
    await kv.put(tombstone_key(session), str(time.time_ns()).encode())
    await bus.nc.publish(tombstone_subject(region), session.encode())
    await bus.nc.flush()
    # the key first: from here on every copy of what it sealed, anywhere, is unreadable
    keys = streams.keys_bucket(region)
    key_gone = await _shred(bus, keys, session)
    await asyncio.sleep(grace_s)
    removed: dict[str, int] = {}
    stored = stored_session_wildcard(region, session)
    targets = [(spec.name, stored)
               for spec in streams.region_streams(region, partitions=bus.partitions)]
    # (the keys bucket again: a worker that missed the notice may have made a key since)
    targets += [(f"KV_{b.bucket}", f"$KV.{b.bucket}.{session}.>")
                for b in streams.region_buckets(region) if b.holds_sessions]
    for stream, subject_filter in targets:
        erased = await _erase(bus, stream, subject_filter, progress)
        removed[stream] = erased + await _purge_filter(bus, stream, subject_filter)
    removed[f"KV_{keys}"] += key_gone
    log.info("session_purged", region=region, session=session, removed=removed)
    return removed


async def request_purge(bus: Bus, region: str, session: str, *, timeout_s: float = 10.0,
                        requested_by: str = "cli") -> PurgeCompleted:
    """Publish a purge request and wait for the purge service's answer."""
    done: asyncio.Future[PurgeCompleted] = asyncio.get_running_loop().create_future()
    request_id = f"{session}-{time.time_ns()}"

    async def on_done(m) -> None:  # type: ignore[no-untyped-def]
        msg = decode(m.data)
        if isinstance(msg, PurgeCompleted) and msg.request_id == request_id and not done.done():
            done.set_result(msg)

    sub = await bus.nc.subscribe(purged_subject(region), cb=on_done)
    try:
        req = PurgeRequested(session=session, region=region, request_id=request_id,
                             requested_by=requested_by)
        await bus.js.publish(purge_subject(region), encode(req))
        return await asyncio.wait_for(done, timeout_s)
    finally:
        await sub.unsubscribe()


class PurgeService:
    """Consumes the purge requests of every served region, each from its region's ops stream
    (consumer ``purger``, the only one the purger identity may read)."""

    CONSUMER = "purger"

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def run(self) -> None:
        for region in self.bus.regions:
            await self.bus.js.add_consumer(
                streams.ops_stream(region),
                js_api.ConsumerConfig(
                    durable_name=self.CONSUMER,
                    filter_subject=purge_subject(region),
                    ack_policy=js_api.AckPolicy.EXPLICIT,
                    ack_wait=30,
                    deliver_policy=js_api.DeliverPolicy.NEW,
                ),
            )
        async with asyncio.TaskGroup() as pulls:  # one puller per region, until cancelled
            for region in self.bus.regions:
                pulls.create_task(PullConsumer(
                    self.bus.nc, stream=streams.ops_stream(region), consumer=self.CONSUMER,
                    handler=self._handle, batch=8,
                ).run(), name=f"purger-{region}")

    async def _handle(self, m: Msg) -> None:
        try:
            req = decode(m.data)
            if not isinstance(req, PurgeRequested):
                raise msgspec.ValidationError(f"expected a purge request, got {type(req).__name__}")
            removed = await purge_session(self.bus, req.region, req.session,
                                          progress=m.in_progress)
        except (msgspec.DecodeError, ValueError, PurgeError) as e:
            log.error("purge_rejected", subject=m.subject, error=str(e))
            await m.term()
            return
        done = PurgeCompleted(session=req.session, region=req.region, request_id=req.request_id,
                              removed=removed, at_ns=time.time_ns())
        await self.bus.js.publish(purged_subject(req.region), encode(done))
        await m.ack()
