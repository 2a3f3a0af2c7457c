"""A continuous pull consumer: keeps pull requests outstanding so messages flow without a
request round trip per message, and hands them one at a time to a callback (backpressure: the next
message is read only when the callback returns)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

log = structlog.get_logger("voxbus.pull")

Handler = Callable[[Msg], Awaitable[None]]


class PullConsumer:
    def __init__(
        self,
        nc: Client,
        *,
        stream: str,
        consumer: str,
        handler: Handler,
        batch: int = 128,
        expires_s: float = 10.0,
    ) -> None:
        self._nc = nc
        self._api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._handler = handler
        self._batch = batch
        self._expires_s = expires_s
        self._outstanding = 0
        self._last_expiry = 0.0
        self.consumer = consumer
        self.delivered = 0
        self._inbox = ""

    async def _request(self) -> None:
        want = self._batch - self._outstanding
        if want <= 0:
            return
        body = {"batch": want, "expires": int(self._expires_s * 1e9)}
        await self._nc.publish(self._api, json.dumps(body).encode(), reply=self._inbox)
        self._outstanding += want
        self._last_expiry = time.monotonic() + self._expires_s

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            self._outstanding = max(0, self._outstanding - 1)
            self.delivered += 1
            await self._handler(msg)
        elif status in ("408", "409"):
            assert msg.headers is not None
            pending = msg.headers.get("Nats-Pending-Messages")
            self._outstanding = max(0, self._outstanding - int(pending)) if pending else 0
            if status == "409":
                log.warning(
                    "pull_conflict", consumer=self.consumer, reason=msg.headers.get("Description")
                )
                await asyncio.sleep(0.1)
        if self._outstanding <= self._batch // 2:
            await self._request()

    async def run(self) -> None:
        """Pull until cancelled. Messages are handled one at a time, in delivery order."""
        self._inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(
            self._inbox, cb=self._on_msg, pending_msgs_limit=4 * self._batch
        )
        try:
            await self._request()
            while True:  # safety net: every request we sent has expired unanswered
                await asyncio.sleep(self._expires_s / 2)
                if time.monotonic() >= self._last_expiry:
                    self._outstanding = 0
                    await self._request()
        finally:
            await sub.unsubscribe()
