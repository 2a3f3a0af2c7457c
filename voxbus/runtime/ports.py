"""What stages need of the bus: the NATS ``Bus`` and ``runtime.testing.MemoryBus`` both give it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from voxbus.contracts.messages import Message


class KvEntry(Protocol):
    value: bytes | None
    revision: int | None


class KeyValueStore(Protocol):
    """The part of a JetStream KV bucket the stages use (same errors: ``KeyNotFoundError``,
    ``KeyWrongLastSequenceError``)."""

    async def get(self, key: str) -> Any: ...

    async def put(self, key: str, value: bytes) -> int: ...

    async def create(self, key: str, value: bytes) -> int: ...

    async def update(self, key: str, value: bytes, last: int | None = None) -> int: ...

    async def delete(self, key: str) -> bool: ...


class StageBus(Protocol):
    regions: list[str]
    tracing: bool

    async def publish(
        self, region: str, msg: Message, *, headers: Mapping[str, str] | None = None,
        ack: bool | None = None,
    ) -> None: ...

    async def publish_error(
        self, region: str, session: str, *, turn: int, code: str, message: str, stage: str,
        source_subject: str = "",
    ) -> None: ...

    async def kv(self, bucket: str) -> Any: ...

    async def state(self, region: str) -> Any:
        """The region's state bucket (a ``KeyValueStore``; its session entries sealed)."""
        ...
