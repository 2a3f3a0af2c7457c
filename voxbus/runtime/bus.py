"""The bus: one NATS connection, JetStream provisioning and message publishing."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from voxbus.contracts import decode, encode, streams, subject_for
from voxbus.contracts.messages import (
    MSG_ID_HEADER,
    AnyMessage,
    AudioIn,
    AudioOut,
    ErrorEvent,
    Message,
    message_id,
)
from voxbus.contracts.subjects import Kind, parse_subject, subject
from voxbus.errors import UserError
from voxbus.runtime import metrics, tracing
from voxbus.runtime.keys import SealedState, SessionKeys
from voxbus.runtime.ratelimit import ErrorBudget
from voxbus.runtime.settings import SettingsError, seal_from_env

log = structlog.get_logger("voxbus.bus")

_AUDIO = (AudioIn, AudioOut)


class UnknownRegion(ValueError):
    pass


class PlacementError(SettingsError):
    """A region's stream or bucket cannot be placed on that region's servers (no server is
    tagged with the region, or too few): a deployment's configuration, said in one line."""


#: JetStream's answer when no set of servers fits a placement (tags, replicas).
_NO_SUITABLE_PEERS = 10005


def server_urls(url: str) -> list[str]:
    """``NATS_URL`` may name several servers of one region, comma-separated."""
    return [u.strip() for u in url.split(",") if u.strip()]


#: Seconds one connection attempt may take (a server that accepts and never answers).
CONNECT_TIMEOUT_S = 2
#: Until the first connection is made: a line at the first failed attempt, then one line per
#: this many seconds while the attempts (every ``reconnect_time_wait``) go on failing.
UNREACHABLE_EVERY_S = 5.0


#: What nats-py connects with (a server without one is ``nats://``).
_SCHEMES = ("nats", "tls", "ws", "wss")


def check_url(url: str) -> None:
    """Each server of ``url`` is one nats-py can connect to, or a one-line ``UserError`` (a
    port out of range made nats-py raise its own error, a scheme like ``http`` retried a host
    that cannot exist)."""
    if not server_urls(url):
        raise UserError("the NATS URL is empty (NATS_URL)")
    for u in server_urls(url):
        parts = urlsplit(u if "://" in u else f"nats://{u}")
        what = f"the NATS URL {shown_url(u)!r}"
        if parts.scheme not in _SCHEMES:
            raise UserError(f"{what}: the scheme must be one of "
                            f"{', '.join(f'{s}://' for s in _SCHEMES)}")
        try:
            parts.port  # noqa: B018 - it raises for a port out of range
        except ValueError:
            raise UserError(f"{what}: the port must be within 1-65535") from None
        if not parts.hostname:
            raise UserError(f"{what} names no host")


def shown_url(url: str) -> str:
    """``url`` fit for a log line: a password written into it is left out."""
    shown = []
    for u in server_urls(url):
        parts = urlsplit(u if "://" in u else f"nats://{u}")
        if parts.password is not None:
            host = parts.netloc.rsplit("@", 1)[1]
            u = parts._replace(netloc=f"{parts.username}:***@{host}").geturl()
        shown.append(u)
    return ",".join(shown)


def unreachable_reason(e: BaseException) -> str:
    """Why one connection attempt failed, in words."""
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, socket.gaierror):
        return f"unknown host ({e.strerror})"
    if isinstance(e, TimeoutError):  # asyncio's and nats-py's too
        return f"no answer within {CONNECT_TIMEOUT_S} s"
    if isinstance(e, OSError):
        return (e.strerror or str(e) or type(e).__name__).lower()
    return str(e).removeprefix("nats: ").strip("'") or type(e).__name__


def login_refused(e: BaseException) -> bool:
    """The server refused the user and password: trying again cannot help."""
    return isinstance(e, nats.errors.AuthorizationError) or (
        isinstance(e, nats.errors.Error) and "authorization violation" in str(e).lower())


class _FirstConnect:
    """What a ``Bus.connect`` says while its first connection is not made: the server's address
    and why each attempt failed, once at the first failure and then every
    ``UNREACHABLE_EVERY_S`` (nats-py retries every 0.25 s, and says nothing itself); a refused
    login ends the attempts with a ``UserError``."""

    def __init__(self, url: str, user: str | None) -> None:
        self.url = shown_url(url)
        self.user = user
        self.attempts = 0
        self.started = time.monotonic()
        self._said_at: float | None = None
        self.refused: asyncio.Future[UserError] = asyncio.get_running_loop().create_future()

    def failed(self, e: BaseException) -> None:
        if self.refused.done():
            return
        if login_refused(e):
            who = (f"the login as {self.user!r}" if self.user
                   else "a connection without a login")
            self.refused.set_result(UserError(
                f"NATS at {self.url} refused {who} (authorization violation): check "
                "VOXBUS_CREDENTIALS, or NATS_USER and NATS_PASSWORD"))
            return
        self.attempts += 1
        now = time.monotonic()
        if self._said_at is None or now - self._said_at >= UNREACHABLE_EVERY_S:
            self._said_at = now
            log.warning("nats_unreachable", url=self.url, reason=unreachable_reason(e),
                        attempts=self.attempts, waited_s=round(now - self.started, 1),
                        note="retrying until it answers")


class Bus:
    """A connection to NATS with the regions this deployment serves."""

    def __init__(self, nc: Client, *, regions: list[str], partitions: int,
                 replicas: int = 0, seal: bool = True) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.regions = list(regions)
        self.partitions = partitions
        self._kv: dict[str, KeyValue] = {}
        #: Trace context goes into headers only when tracing is on (decided at connect).
        self.tracing = tracing.enabled()
        self._reconnect_listeners: list[Callable[[], Awaitable[None]]] = []
        self._disconnect_listeners: list[Callable[[], None]] = []
        #: Error events answering bad input, rate-limited per session and in all (``ratelimit``).
        self.error_budget = ErrorBudget()
        #: False for an identity that may not create streams (every role but the operator's):
        #: a worker then waits for the operator's provisioning instead of asking in vain.
        self.may_provision = True
        #: Replicas of each stream and bucket this process creates (0: three where the region's
        #: cluster has three servers, else one).
        self.replicas = replicas
        self._closing = False
        #: Personal payloads are sealed under their session's key (``contracts.sealing``).
        self.seal = seal
        self.keys = SessionKeys(self.kv, self._remake_keys)
        self._restoring: asyncio.Task[int] | None = None
        #: When the connection last came back (monotonic; -inf: never lost).
        self.reconnected_at = float("-inf")

    def on_reconnect(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Call ``listener`` each time the connection comes back (pull requests sent before are
        gone with the old connection; the server may have come back with an empty store)."""
        self._reconnect_listeners.append(listener)

    async def _reconnected(self) -> None:
        log.info("bus_reconnected", server=str(self.nc.connected_url.netloc
                                             if self.nc.connected_url else ""))
        self.reconnected_at = time.monotonic()
        if len(self.keys) and (self._restoring is None or self._restoring.done()):
            # the server may have come back without its memory, where the keys live
            self._restoring = asyncio.create_task(self.keys.restore(), name="keys-restore")
        for listener in list(self._reconnect_listeners):
            try:
                await listener()
            except Exception as e:  # noqa: BLE001 - one listener must not stop the others
                log.error("reconnect_listener_failed", error=repr(e))

    def on_disconnect(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` each time the connection drops."""
        self._disconnect_listeners.append(listener)

    async def _disconnected(self) -> None:
        if self._closing:  # our own close: not an outage
            return
        log.warning("bus_disconnected")
        for listener in list(self._disconnect_listeners):
            listener()

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        regions: list[str],
        partitions: int = streams.DEFAULT_PARTITIONS,
        name: str = "voxbus",
        user: str | None = None,
        password: str | None = None,
        inbox_prefix: str | None = None,
        max_reconnect_attempts: int = -1,
        replicas: int = 0,
        seal: bool | None = None,
    ) -> Bus:
        """``inbox_prefix``: where replies come to (``_INBOX`` by default); an identity may
        subscribe only under its own (``ops.auth``). ``seal``: ``VOXBUS_SEAL`` by default."""
        check_url(url)
        bus: Bus | None = None
        first = _FirstConnect(url, user)

        async def reconnected() -> None:
            if bus is not None:
                await bus._reconnected()

        async def disconnected() -> None:
            if bus is not None:
                await bus._disconnected()

        async def error(e: Exception) -> None:
            if bus is None:  # not connected yet: said by ``first``, at its own pace
                first.failed(e)
                return
            # a refused reconnect is the outage already logged (``bus_disconnected``)
            level = log.debug if isinstance(e, OSError) else log.warning
            level("bus_error", error=repr(e))

        nc = Client()
        connecting = asyncio.ensure_future(nc.connect(
            server_urls(url),
            name=name,
            user=user,
            password=password,
            inbox_prefix=inbox_prefix or "_INBOX",
            max_reconnect_attempts=max_reconnect_attempts,
            allow_reconnect=max_reconnect_attempts != 0,
            connect_timeout=CONNECT_TIMEOUT_S,
            # Retried every 0.25 s: work resumes within a second of the server coming back
            # (nats-py annotates an int; it sleeps for the float)
            reconnect_time_wait=0.25,  # type: ignore[arg-type]
            reconnected_cb=reconnected,
            disconnected_cb=disconnected,
            error_cb=error,
        ))
        either: list[asyncio.Future[Any]] = [connecting, first.refused]
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if first.refused.done():
                raise first.refused.result()
            await connecting  # connected, or why it gave up (``max_reconnect_attempts``)
        except BaseException:  # refused, gave up, or we were cancelled: no attempt goes on
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting
            with contextlib.suppress(Exception):
                await nc.close()
            raise
        bus = cls(nc, regions=regions, partitions=partitions, replicas=replicas,
                  seal=seal_from_env() if seal is None else seal)
        return bus

    async def close(self, timeout_s: float = 10.0) -> None:
        """Drain (deliver what is buffered, both ways) and close; close anyway after the timeout."""
        if self._restoring is not None:
            self._restoring.cancel()
            with contextlib.suppress(BaseException):
                await self._restoring
        if self.nc.is_closed:
            return
        self._closing = True
        try:
            await asyncio.wait_for(self.nc.drain(), timeout_s)
        except Exception as e:  # noqa: BLE001 - closing must not fail
            log.warning("bus_drain_failed", error=repr(e))
            await self.nc.close()

    def check_region(self, region: str) -> str:
        if region not in self.regions:
            raise UnknownRegion(f"region {region!r} is not served here (serving {self.regions})")
        return region

    # ---- provisioning -------------------------------------------------------------------------

    async def provision(
        self, retention: streams.Retention | None = None, *, create_only: bool = False
    ) -> None:
        """Create or update every stream and bucket of the served regions (idempotent).
        ``create_only``: create what is missing, leave what exists as it is (a worker
        recovering from an empty store must not reset an operator's settings)."""
        if not create_only:
            await self._drop_legacy_ops()
        for region in self.regions:
            for spec in [*streams.ops_streams([region], retention=retention),
                         *streams.region_streams(region, partitions=self.partitions,
                                                 retention=retention)]:
                await self._ensure_stream(spec, region, create_only=create_only)
            for b in streams.region_buckets(region, retention=retention):
                await self._ensure_bucket(b, region, create_only=create_only)

    @property
    def clustered(self) -> bool:
        """Connected to a server of a named cluster (a region's, in a supercluster): streams
        are then placed on their region's servers. A lone server holds everything itself."""
        info: dict[str, object] = getattr(self.nc, "_server_info", None) or {}
        return bool(info.get("cluster"))

    def placement(self, region: str) -> js_api.Placement | None:
        return js_api.Placement(tags=[streams.region_tag(region)]) if self.clustered else None

    async def _create_placed(self, what: str, region: str,
                             create: Callable[[int], Awaitable[object]]) -> None:
        """Create with three replicas where the region's cluster has room for them, else one
        (or exactly ``replicas``); no server of the region: a one-line ``PlacementError``."""
        tries = [self.replicas] if self.replicas else ([3, 1] if self.clustered else [1])
        for n in tries:
            try:
                await create(n)
                log.info("created", what=what, region=region, replicas=n,
                         placement=streams.region_tag(region) if self.clustered else None)
                return
            except BadRequestError as e:
                if e.err_code != _NO_SUITABLE_PEERS or n == tries[-1]:
                    raise PlacementError(
                        f"{what} of region {region!r} cannot be placed with {n} replica(s) on "
                        f"servers tagged {streams.region_tag(region)!r}: {e.description}"
                    ) from None

    async def _ensure_stream(self, spec: streams.StreamSpec, region: str, *,
                             create_only: bool = False) -> None:
        cfg = js_api.StreamConfig(
            name=spec.name,
            subjects=spec.subjects,
            description=spec.description,
            max_age=spec.max_age_s,
            max_msgs=spec.max_msgs,
            max_msgs_per_subject=spec.max_msgs_per_subject,
            discard=js_api.DiscardPolicy.OLD,
            duplicate_window=min(spec.duplicate_window_s or streams.DUPLICATE_WINDOW_S,
                                 spec.max_age_s),
            storage=js_api.StorageType.FILE,
            retention=js_api.RetentionPolicy.LIMITS,
            allow_direct=True,
            subject_transform=(
                js_api.SubjectTransform(src=spec.transform[0], dest=spec.transform[1])
                if spec.transform
                else None
            ),
        )
        try:
            existing = await self.js.stream_info(spec.name)
        except NotFoundError:
            async def add(n: int) -> None:
                await self.js.add_stream(dataclasses.replace(
                    cfg, num_replicas=n, placement=self.placement(region)))

            await self._create_placed(f"stream {spec.name}", region, add)
            return
        if create_only:
            return
        try:  # where it is and how many copies it has stay as they are: nothing moves
            await self.js.update_stream(dataclasses.replace(
                cfg, num_replicas=existing.config.num_replicas,
                placement=existing.config.placement))
        except BadRequestError as e:
            log.warning("stream_update_refused", stream=spec.name, error=str(e))

    async def _drop_legacy_ops(self) -> None:
        """Stores provisioned before ops streams were per region have one ``VOXBUS_OPS`` whose
        subjects overlap theirs; it held only purge records (a pending request is lost: it is
        logged, and can be sent again)."""
        try:
            info = await self.js.stream_info(streams.LEGACY_OPS_STREAM)
        except NotFoundError:
            return
        await self.js.delete_stream(streams.LEGACY_OPS_STREAM)
        log.warning("legacy_ops_stream_removed", stream=streams.LEGACY_OPS_STREAM,
                    messages=info.state.messages)

    async def _ensure_bucket(self, spec: streams.BucketSpec, region: str, *,
                             create_only: bool = False) -> None:
        """Buckets allow direct gets: a key is then read by its subject
        (``$JS.API.DIRECT.GET.KV_<bucket>.$KV.<bucket>.<key>``), which permissions can limit
        to an identity's own keys; a message get names the key only in its payload."""
        try:
            kv = await self.js.key_value(spec.bucket)
        except (NotFoundError, nats.js.errors.BucketNotFoundError):
            async def create(n: int) -> None:
                # nats-py's create_key_value drops the placement: the bucket's stream is made
                # here as it would make it, placed
                await self.js.add_stream(js_api.StreamConfig(
                    name=f"KV_{spec.bucket}", description=spec.description,
                    subjects=[f"$KV.{spec.bucket}.>"], allow_direct=True,
                    # a purge erases a session's entries message by message (``ops.purge``)
                    allow_rollup_hdrs=True, deny_delete=not spec.holds_sessions,
                    discard=js_api.DiscardPolicy.NEW,
                    duplicate_window=min(120.0, spec.ttl_s), max_age=spec.ttl_s,
                    max_consumers=-1, max_msgs=-1, max_msgs_per_subject=1, num_replicas=n,
                    discard_new_per_subject=spec.write_once,
                    storage=(js_api.StorageType.MEMORY if spec.memory
                             else js_api.StorageType.FILE),
                    placement=self.placement(region),
                ))
                self._kv[spec.bucket] = await self.js.key_value(spec.bucket)

            await self._create_placed(f"bucket {spec.bucket}", region, create)
            return
        self._kv[spec.bucket] = kv
        if create_only:  # a worker recovering: nothing to read or change in what exists
            return
        info = await self.js.stream_info(f"KV_{spec.bucket}")
        if not info.config.allow_direct:  # made by an older voxbus
            await self.js.update_stream(dataclasses.replace(info.config, allow_direct=True))
            self._kv[spec.bucket] = await self.js.key_value(spec.bucket)
            log.info("bucket_direct_get_enabled", bucket=spec.bucket)
        if spec.holds_sessions and info.config.deny_delete:  # JetStream can't lift it
            log.warning("bucket_entries_not_erasable", bucket=spec.bucket,
                        note="made by an older voxbus: a purge marks its entries deleted "
                             "but cannot overwrite them; recreate the bucket to erase")

    async def _remake_keys(self, region: str) -> None:
        """The region's keys bucket, made again where missing (where this identity may)."""
        if not self.may_provision:
            return
        spec = next(b for b in streams.region_buckets(region)
                    if b.bucket == streams.keys_bucket(region))
        self.forget_kv(spec.bucket)
        await self._ensure_bucket(spec, region, create_only=True)

    def forget_kv(self, bucket: str) -> None:
        self._kv.pop(bucket, None)

    async def kv(self, bucket: str) -> KeyValue:
        if bucket not in self._kv:
            self._kv[bucket] = await self.js.key_value(bucket)
        return self._kv[bucket]

    async def state(self, region: str) -> KeyValue | SealedState:
        """The region's state bucket, its session entries sealed (``keys.SealedState``)."""
        kv = await self.kv(streams.state_bucket(region))
        return SealedState(kv, self.keys, region) if self.seal else kv

    async def encoded(self, region: str, msg: Message) -> bytes:
        """``msg`` as it goes on the wire: sealed where its kind travels sealed."""
        return encode(await self.keys.seal(region, msg) if self.seal else msg)

    # ---- publishing ---------------------------------------------------------------------------

    async def publish(
        self,
        region: str,
        msg: Message,
        *,
        headers: Mapping[str, str] | None = None,
        ack: bool | None = None,
    ) -> None:
        """Publish a session message into its region's stream.

        Text and control messages wait for the stream's ack. Audio frames (``ack=None`` picks by
        kind) are fire-and-forget: the stream stores them all the same, and on a broken
        connection a lost 20 ms frame is worth less than a frame delayed by an ack round trip.
        A region this deployment doesn't serve raises ``UnknownRegion`` after an error event."""
        if region not in self.regions:
            log.warning("unknown_region", region=region, session=msg.session)
            await self.publish_error(
                region, msg.session, turn=msg.turn, code="unknown_region",
                message=f"region {region!r} is not served here", stage="bus",
            )
            self.check_region(region)
        subj = subject_for(region, msg)
        if not self.tracing:
            await self._send(region, subj, msg, dict(headers or {}), ack)
            return
        with tracing.publishing(msg) as trace_headers:
            await self._send(region, subj, msg, {**trace_headers, **(headers or {})}, ack)

    async def _send(self, region: str, subj: str, msg: Message, hdrs: dict[str, str],
                    ack: bool | None) -> None:
        if MSG_ID_HEADER not in hdrs and (msg_id := message_id(msg)) is not None:
            hdrs[MSG_ID_HEADER] = msg_id
        fire_and_forget = ack is False or (ack is None and type(msg) in _AUDIO)
        data = await self.encoded(region, msg)
        if fire_and_forget:
            await self.nc.publish(subj, data, headers=hdrs or None)
        else:
            await self.js.publish(subj, data, headers=hdrs or None)

    async def read(self, subj: str, data: bytes) -> AnyMessage:
        """A session message as published on ``subj`` (stored or live), opened where it is
        sealed. Raises ``msgspec.DecodeError``/``ValidationError`` for bad bytes,
        ``contracts.subjects.InvalidSubject`` for a subject that names no session, and
        ``contracts.sealing.SealError`` (``keys.KeyGone``: purged) where it does not open."""
        return await self.keys.open(parse_subject(subj).region, decode(data))

    async def publish_error(
        self, region: str, session: str, *, turn: int, code: str, message: str, stage: str,
        source_subject: str = "",
    ) -> None:
        """Answer bad input on the session's control subject; never raises. Past the session's
        (or this process's) error budget the event is counted and logged, not published."""
        metrics.ERRORS.add(1, {"stage": stage, "code": code})
        if not self.error_budget.allow(f"{region}.{session}"):
            n = self.error_budget.suppressed
            if n & (n - 1) == 0:  # 1, 2, 4, 8...: a flood logs a few lines, not one per message
                log.warning("error_events_suppressed", total=n, code=code, stage=stage,
                            session=session)
            return
        event = ErrorEvent(
            session=session, turn=turn, code=code, message=message[:500], stage=stage,
            subject=source_subject, at_ns=time.time_ns(),
        )
        try:
            if region in self.regions:
                await self.publish(region, event)
            else:  # no stream stores it; whoever published there hears it on core NATS
                await self.nc.publish(subject(region, session, Kind.ERROR), encode(event))
        except Exception as e:  # noqa: BLE001 - an error report must not raise
            log.error("error_event_not_published", code=code, error=str(e))
