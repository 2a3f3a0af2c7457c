"""A continuous pull consumer: keeps pull requests outstanding so messages flow without a
request round trip per message, and hands them one at a time to a callback (backpressure: the next
message is read only when the callback returns).

A pull request can die without a word: the server restarted, the link dropped, the consumer was
deleted. Requests are short (``expires_s``) and sent again as they expire; with ``heartbeat_s``
a request asks for idle heartbeats, and one we hear nothing from for two is counted dead.
``kick`` (on reconnect) sends a new one at once; a missing consumer (no responders, or
"consumer deleted") calls ``on_missing`` to recreate it. No request goes out while ``allowed``
says no (the partition's lease is in doubt)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from voxbus.runtime.transient import transient

log = structlog.get_logger("voxbus.pull")

Handler = Callable[[Msg], Awaitable[None]]
OnMissing = Callable[[], Awaitable[object]]


class PullConsumer:
    def __init__(
        self,
        nc: Client,
        *,
        stream: str,
        consumer: str,
        handler: Handler,
        on_missing: OnMissing | None = None,
        allowed: Callable[[], bool] = lambda: True,
        batch: int = 128,
        expires_s: float = 10.0,
        heartbeat_s: float = 0.0,
    ) -> None:
        self._nc = nc
        self._api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._handler = handler
        self._on_missing = on_missing
        self._allowed = allowed
        self._batch = batch
        self._expires_s = expires_s
        self._heartbeat_s = heartbeat_s
        self._outstanding = 0
        self._last_expiry = 0.0
        self._last_heard = 0.0
        self._missing = False
        self._refusing = False
        self.done = asyncio.Event()
        self._tend_every_s = min(x for x in (heartbeat_s / 2, expires_s / 4) if x > 0)
        self.consumer = consumer
        self.stream = stream
        self.delivered = 0
        self._inbox = ""

    def refuse(self) -> None:
        """Stop taking messages: ask for no more, and hand back at once (``nak``) what the
        requests already sent still bring, so the next owner gets them first, as redeliveries.
        ``run`` returns when those requests have expired."""
        self._refusing = True

    async def _request(self) -> None:
        want = self._batch - self._outstanding
        if want <= 0 or not self._inbox or self._refusing or not self._allowed():
            return
        body: dict[str, int] = {"batch": want, "expires": int(self._expires_s * 1e9)}
        if self._heartbeat_s:
            body["idle_heartbeat"] = int(self._heartbeat_s * 1e9)
        await self._nc.publish(self._api, json.dumps(body).encode(), reply=self._inbox)
        self._outstanding += want
        now = time.monotonic()
        self._last_expiry = now + self._expires_s
        self._last_heard = max(self._last_heard, now)

    async def kick(self) -> None:
        """Forget the requests sent so far (the connection they were on is gone) and ask again."""
        self._outstanding = 0
        self._last_heard = time.monotonic()
        await self._request()

    async def _on_msg(self, msg: Msg) -> None:
        self._last_heard = time.monotonic()
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            self._outstanding = max(0, self._outstanding - 1)
            if self._refusing:
                await msg.nak(delay=0.1)
                return
            self.delivered += 1
            await self._handler(msg)
        elif status == "100":  # idle heartbeat: the request is alive
            return
        elif status == "408":  # a request expired: its successor went out before it did
            return
        elif status == "409":
            assert msg.headers is not None
            pending = msg.headers.get("Nats-Pending-Messages")
            self._outstanding = max(0, self._outstanding - int(pending)) if pending else 0
            reason = _description(msg)
            log.warning("pull_conflict", consumer=self.consumer, reason=reason)
            if "deleted" in reason.lower():
                self._missing = True
                return
            await asyncio.sleep(0.1)
        elif status == "503":  # nobody serves the consumer: it (or its stream) is gone
            self._outstanding = 0
            self._missing = True
            return
        if self._outstanding <= self._batch // 2:
            await self._request()

    async def _recover_missing(self) -> None:
        log.warning("consumer_missing", stream=self.stream, consumer=self.consumer)
        if self._on_missing is not None:
            await self._on_missing()
        self._missing = False
        await self.kick()

    async def _tend(self) -> None:
        now = time.monotonic()
        if self._refusing:
            return
        if self._missing:
            await self._recover_missing()
        elif now >= self._last_expiry - self._expires_s / 2 or (
            self._heartbeat_s and now - self._last_heard > 2 * self._heartbeat_s
        ):
            # Renewed before it expires (a message arriving between one request's end and the
            # next would wait for the next), or it went silent: ask again, afresh.
            self._outstanding = 0
            await self._request()

    async def run(self) -> None:
        """Pull until cancelled. Messages are handled one at a time, in delivery order."""
        self._inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(
            self._inbox, cb=self._on_msg, pending_msgs_limit=4 * self._batch
        )
        try:
            while not (self._refusing and time.monotonic() >= self._last_expiry):
                try:
                    await self._tend()
                except Exception as e:  # noqa: BLE001 - classified below
                    if not transient(e):
                        raise
                    log.debug("pull_retry", consumer=self.consumer, error=repr(e))
                await asyncio.sleep(self._tend_every_s)
        finally:
            self.done.set()
            await sub.unsubscribe()


def _description(msg: Msg) -> str:
    """A status message's description (nats-py keys it by an enum whose hash is not its text)."""
    for key, value in (msg.headers or {}).items():
        if str(getattr(key, "value", key)).lower() == "description":
            return value
    return ""
