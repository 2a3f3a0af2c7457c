"""Partition leases in a JetStream KV bucket whose entries expire (``ttl``).

Each replica of a stage heartbeats a membership key and holds leases on a fair share
(``ceil(partitions / live replicas)``) of the partitions, refreshing each with a compare-and-set
update. A replica that dies stops refreshing; its keys age out after ``ttl`` and live replicas take
the partitions over. A replica over its share (a new one joined) drains a partition, then deletes
the key so another replica can take it at once.
"""

from __future__ import annotations

import asyncio
import math
import zlib
from collections.abc import Awaitable, Callable

import structlog
from nats.js.errors import (
    BadRequestError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)
from nats.js.kv import KeyValue

from voxbus.runtime.tasks import TaskSet

log = structlog.get_logger("voxbus.leases")

OnChange = Callable[[int], Awaitable[None]]


class PartitionLeases:
    def __init__(
        self,
        kv: KeyValue,
        *,
        stage: str,
        replica: str,
        partitions: int,
        on_acquire: OnChange,
        on_release: OnChange,
        tick_s: float = 1.0,
    ) -> None:
        self._kv = kv
        self._stage = stage
        self._replica = replica
        self._partitions = partitions
        self._on_acquire = on_acquire
        self._on_release = on_release
        self._tick_s = tick_s
        self.held: dict[int, int] = {}  # partition -> KV revision of our lease
        self._releasing: set[int] = set()
        self._drains = TaskSet(f"leases-{stage}")

    def _key(self, p: int) -> str:
        return f"{self._stage}.p{p}"

    def _member_key(self) -> str:
        return f"{self._stage}.m.{self._replica}"

    async def _members(self) -> int:
        try:
            keys = await self._kv.keys()
        except NoKeysError:
            return 1
        prefix = f"{self._stage}.m."
        return max(1, sum(1 for k in keys if k.startswith(prefix)))

    async def _refresh(self) -> None:
        for p, rev in list(self.held.items()):
            try:
                self.held[p] = await self._kv.update(self._key(p), self._replica.encode(), last=rev)
            except (KeyWrongLastSequenceError, KeyNotFoundError):
                log.warning("lease_lost", stage=self._stage, partition=p)
                del self.held[p]
                await self._on_release(p)

    async def _acquire(self, want: int) -> None:
        start = zlib.crc32(self._replica.encode()) % self._partitions
        for i in range(self._partitions):
            if want <= 0:
                return
            p = (start + i) % self._partitions
            if p in self.held:
                continue
            try:
                self.held[p] = await self._kv.create(self._key(p), self._replica.encode())
            except KeyWrongLastSequenceError:
                continue
            log.info("lease_acquired", stage=self._stage, partition=p, replica=self._replica)
            await self._on_acquire(p)
            want -= 1

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
        if rev is not None:
            await self._delete_if_ours(self._key(p))
        log.info("lease_released", stage=self._stage, partition=p, replica=self._replica)

    async def _delete_if_ours(self, key: str) -> None:
        """Delete our lease key, unless another replica holds it by now."""
        try:
            entry = await self._kv.get(key)
            if entry.value == self._replica.encode() and entry.revision is not None:
                await self._kv.delete(key, last=entry.revision)
        except (KeyNotFoundError, KeyWrongLastSequenceError, BadRequestError):
            pass

    async def tick(self) -> None:
        await self._kv.put(self._member_key(), b"1")
        await self._refresh()
        share = math.ceil(self._partitions / await self._members())
        keeping = [p for p in sorted(self.held) if p not in self._releasing]
        if len(keeping) > share:
            for p in keeping[share:]:
                self._releasing.add(p)
                self._drains.spawn(self.release(p), name=f"drain-p{p}")
        elif len(self.held) < share:
            await self._acquire(share - len(self.held))

    async def run(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self._tick_s)

    async def release_all(self) -> None:
        await self._drains.close()
        await asyncio.gather(*(self.release(p) for p in sorted(self.held)))
        try:
            await self._kv.delete(self._member_key())
        except KeyNotFoundError:
            pass
