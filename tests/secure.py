"""A nats-server that requires the identities of ``voxbus nats --secure``, and logging in to it
as one of them: shared by the permission, auth and surface tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from voxbus.ops.auth import Identities, server_config
from voxbus.ops.nats import EmbeddedNats
from voxbus.runtime.bus import Bus


@contextmanager
def secure_nats(ids: Identities, conf: Path, **config: int) -> Iterator[EmbeddedNats]:
    conf.write_text(server_config(ids, **config))
    server = EmbeddedNats(config_file=conf).start()
    try:
        yield server
    finally:
        server.stop()


async def connect_as(server: EmbeddedNats, ids: Identities, role: str, region: str,
                     **kw: Any) -> Bus:
    i = ids.get(role, region)
    return await Bus.connect(server.url, regions=[region], user=i.user, password=i.password,
                             inbox_prefix=i.inbox_prefix, name=f"test-{role}", **kw)
