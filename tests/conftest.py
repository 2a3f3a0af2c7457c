"""Shared fixtures: a real nats-server per test (or NATS_URL), and a provisioned bus."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from voxbus.ops.nats import EmbeddedNats
from voxbus.runtime.bus import Bus

REGION = "test"


@pytest.fixture
def nats_server() -> Iterator[EmbeddedNats]:
    server = EmbeddedNats().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(nats_server: EmbeddedNats) -> str:
    return nats_server.url


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_url, regions=[REGION], partitions=8, name="test")
    await b.provision()
    try:
        yield b
    finally:
        await b.close()
