"""The session keys one process uses (``contracts.sealing``): read from the region's keys bucket,
or made there by whoever needs the key first (the bucket refuses a second writer: both then use
the first one's), and cached, a bounded number, in this process."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import nats.errors
import structlog
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from voxbus.contracts import streams
from voxbus.contracts.messages import AnyMessage, Message, Sealed
from voxbus.contracts.sealing import (
    KEY_BYTES,
    Sealer,
    SealError,
    is_sealed_value,
    key_name,
    seals,
)

log = structlog.get_logger("voxbus.keys")


class KeyGone(SealError):
    """The session has no key: it was purged (or never started on this bus)."""


#: Session keys a process keeps at once (a few hundred bytes each); the least recently used go.
CACHE_SIZE = 4096


#: How long a region whose keys bucket is missing (a server back with an empty store, before
#: provisioning) or refused goes without sealing before this process tries again.
UNUSABLE_RETRY_S = 2.0
#: After the connection comes back: how long the keys this process holds are offered back to a
#: keys bucket that lost them (a server back without its memory), while the bucket is missing.
RESTORE_FOR_S = 30.0


class SessionKeys:
    """``bucket``: the bus's KV bucket of that name (``Bus.kv``); ``remake``: make a region's
    keys bucket again where it is missing (a server back without its memory keeps the other
    streams, on disk, and nobody would notice), if this process may."""

    def __init__(self, bucket: Callable[[str], Awaitable[KeyValue]],
                 remake: Callable[[str], Awaitable[None]] | None = None,
                 capacity: int = CACHE_SIZE) -> None:
        self._bucket = bucket
        self._remake = remake
        self._capacity = capacity
        self._cache: OrderedDict[tuple[str, str], Sealer] = OrderedDict()
        self._finding: dict[tuple[str, str], asyncio.Future[Sealer | None]] = {}
        #: Regions whose keys bucket this process could not use (missing, or refused), and
        #: when: they go unsealed (said in the log) until ``UNUSABLE_RETRY_S`` later.
        self._unusable: dict[str, float] = {}
        #: When ``restore`` last ran: only after it can a key held here differ from the bus's.
        self._restored_at = float("-inf")

    def __len__(self) -> int:
        return len(self._cache)

    def forget(self, session: str) -> None:
        """Drop a session's key from this process (its purge erases it from the bus)."""
        for k in [k for k in self._cache if k[1] == session]:
            del self._cache[k]

    def cached(self, region: str, session: str) -> Sealer | None:
        sealer = self._cache.get((region, session))
        if sealer is not None:
            self._cache.move_to_end((region, session))
        return sealer

    def _keep(self, region: str, sealer: Sealer) -> Sealer:
        self._cache[(region, sealer.session)] = sealer
        self._cache.move_to_end((region, sealer.session))
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return sealer

    async def sealer(self, region: str, session: str, *, create: bool) -> Sealer | None:
        """The session's sealer; made (with a new key) where ``create`` and the session has no
        key yet. ``None``: no key and none made, or the region has no usable keys bucket."""
        if (sealer := self.cached(region, session)) is not None:
            return sealer
        if time.monotonic() - self._unusable.get(region, -UNUSABLE_RETRY_S) < UNUSABLE_RETRY_S:
            return None
        k = (region, session)
        if (finding := self._finding.get(k)) is not None:
            found = await asyncio.shield(finding)
            if found is not None or not create:
                return found
        fut: asyncio.Future[Sealer | None] = asyncio.get_running_loop().create_future()
        self._finding[k] = fut
        try:
            found = await self._find(region, session, create=create)
            fut.set_result(found)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: whoever awaits it sees it too
            raise
        finally:
            if self._finding.get(k) is fut:
                del self._finding[k]
        return found

    async def _find(self, region: str, session: str, *, create: bool) -> Sealer | None:
        try:
            kv = await self._bucket(streams.keys_bucket(region))
            key = await self._get(kv, session)
            if key is None and create:
                try:
                    await kv.create(key_name(session), os.urandom(KEY_BYTES))
                except (KeyWrongLastSequenceError, APIError) as e:
                    # another process made it first (the bucket keeps one value per key)
                    log.debug("session_key_made_elsewhere", session=session, error=str(e))
                key = await self._get(kv, session)
        except BucketNotFoundError:
            self._unusable_region(region, "no keys bucket: provision the region "
                                  "(payloads travel unsealed until then)")
            await self._make_again(region)
            return None
        except APIError as e:
            why = ("this identity may not use the keys bucket" if "permission" in str(e).lower()
                   else "the keys bucket answered an error")
            self._unusable_region(region, f"{why}: {e}")
            return None
        except (nats.errors.Error, TimeoutError) as e:  # an outage: no answer, no responders
            self._unusable_region(region, f"the keys bucket is out of reach: {e!r}")
            await self._make_again(region)
            return None
        self._unusable.pop(region, None)
        return None if key is None else self._keep(region, Sealer(session, key))

    async def _get(self, kv: KeyValue, session: str) -> bytes | None:
        try:
            entry = await kv.get(key_name(session))
        except NotFoundError:  # KeyNotFoundError, KeyDeletedError
            return None
        return entry.value or None

    async def _make_again(self, region: str) -> None:
        if self._remake is None:
            return
        try:
            await self._remake(region)
        except Exception as e:  # noqa: BLE001 - refused under least privilege, or an outage
            log.debug("keys_bucket_not_made", region=region, error=repr(e))

    def _unusable_region(self, region: str, why: str) -> None:
        if region not in self._unusable:
            log.error("session_keys_unusable", region=region, error=why)
        self._unusable[region] = time.monotonic()

    async def restore(self, *, for_s: float = RESTORE_FOR_S) -> int:
        """Offer the keys this process holds back to their buckets (a server that came back
        without its memory lost them; the streams it kept on disk are sealed under them),
        waiting up to ``for_s`` for a bucket provisioned again. Where the bucket meanwhile has
        another key for a session, that one is used from then on. How many were put back."""
        self._restored_at = time.monotonic()
        restored, deadline = 0, time.monotonic() + for_s
        for (region, session), sealer in list(self._cache.items()):
            while True:
                try:
                    kv = await self._bucket(streams.keys_bucket(region))
                    await kv.create(key_name(session), sealer.key)
                    restored += 1
                except (KeyWrongLastSequenceError, BadRequestError):
                    key = await self._get(kv, session)
                    if key is not None and key != sealer.key and (region, session) in self._cache:
                        self._keep(region, Sealer(session, key))
                except Exception as e:  # noqa: BLE001 - the bucket not back yet, or an outage
                    if time.monotonic() < deadline:
                        await self._make_again(region)
                        await asyncio.sleep(0.5)
                        continue
                    log.warning("session_keys_not_restored", region=region, error=repr(e))
                    return restored
                break
        if restored:
            log.warning("session_keys_restored", keys=restored)
        return restored

    async def seal(self, region: str, msg: Message) -> Message:
        """``msg`` sealed where its kind travels sealed (its session's key made if need be)."""
        if not seals(msg):
            return msg
        sealer = await self.sealer(region, msg.session, create=True)
        return msg if sealer is None else sealer.seal(msg)

    async def open(self, region: str, msg: AnyMessage) -> AnyMessage:
        """The message inside a sealed one (others as they are); ``KeyGone`` where the session
        has no key (purged, or its key not yet back after an outage), ``SealError`` where the
        key does not open it."""
        if not isinstance(msg, Sealed):
            return msg
        sealer = await self.sealer(region, msg.session, create=False)
        if sealer is None:
            raise KeyGone(f"session {msg.session!r} has no key (purged?)")
        try:
            return sealer.open(msg)
        except SealError:
            if time.monotonic() - self._restored_at > RESTORE_FOR_S:
                raise  # tampered, or another session's: asking the bus again changes nothing
            # a key held since before an outage, replaced on the bus since?
            self._cache.pop((region, msg.session), None)
            again = await self.sealer(region, msg.session, create=False)
            if again is None or again.key == sealer.key:
                raise
            return again.open(msg)


def _session_of(name: str) -> str | None:
    """The session a state key belongs to (``<session>.<owner>``); ``None`` for the others
    (tombstones ``purged/<session>``)."""
    session, dot, _ = name.partition(".")
    return session if dot and "/" not in session else None


class SealedState:
    """A region's state bucket whose session entries (``<session>.<owner>``) are sealed under
    their session's key: a superseded revision, left in the bucket's files until they are
    compacted, is ciphertext like the rest once the key is erased. Entries of no session
    (tombstones) stay clear. The same ``get``/``put``/``create``/``update``/``delete`` and
    errors as ``KeyValue``."""

    def __init__(self, kv: KeyValue, keys: SessionKeys, region: str) -> None:
        self._kv = kv
        self._keys = keys
        self._region = region

    async def _sealed(self, name: str, value: bytes) -> bytes:
        session = _session_of(name)
        if session is None:
            return value
        sealer = await self._keys.sealer(self._region, session, create=True)
        return value if sealer is None else sealer.seal_value(name, value)

    async def get(self, key: str) -> KeyValue.Entry:
        entry = await self._kv.get(key)
        if entry.value is None or not is_sealed_value(entry.value):
            return entry
        session = _session_of(key)
        sealer = None if session is None else await self._keys.sealer(
            self._region, session, create=False)
        if sealer is None:
            raise KeyGone(f"the state entry {key!r} is sealed and its session has no key")
        return dataclasses.replace(entry, value=sealer.open_value(key, entry.value))

    async def put(self, key: str, value: bytes) -> int:
        return await self._kv.put(key, await self._sealed(key, value))

    async def create(self, key: str, value: bytes) -> int:
        return await self._kv.create(key, await self._sealed(key, value))

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        return await self._kv.update(key, await self._sealed(key, value), last=last)

    async def delete(self, key: str) -> bool:
        return await self._kv.delete(key)
