"""Only the operator identity may purge: permissions enforced by a real nats-server."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from voxbus.contracts import encode, streams
from voxbus.contracts.messages import AudioIn, PurgeRequested
from voxbus.contracts.subjects import purge_subject
from voxbus.ops.auth import Credentials, server_config
from voxbus.ops.nats import EmbeddedNats
from voxbus.ops.purge import PurgeError, PurgeService, purge_session
from voxbus.runtime.bus import Bus
from voxbus.runtime.echo import EchoStage
from voxbus.runtime.tasks import TaskSet
from voxbus.runtime.worker import Worker

REGION = "eu"
CREDS = Credentials.generate()


@pytest.fixture
def secure_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    conf = tmp_path / "nats.conf"
    conf.write_text(server_config([REGION], CREDS))
    server = EmbeddedNats(config_file=conf).start()
    try:
        yield server
    finally:
        server.stop()


async def _connect(url: str, user: str, password: str) -> Bus:
    return await Bus.connect(url, regions=[REGION], partitions=4, user=user, password=password)


def _frame(session: str) -> AudioIn:
    return AudioIn(session=session, seq=0, sample_rate_hz=16000, capture_ns=time.time_ns(),
                   pcm=b"\0\0" * 160)


async def _stored(bus: Bus) -> int:
    info = await bus.js.stream_info(streams.audio_stream(REGION))
    return info.state.messages


async def test_stage_identity_cannot_purge_but_can_work(secure_server: EmbeddedNats) -> None:
    op = await _connect(secure_server.url, "operator", CREDS.operator)
    await op.provision()
    stage = await _connect(secure_server.url, "stage", CREDS.stage)
    tasks = TaskSet("auth-test")
    tasks.spawn(PurgeService(op).run())
    worker = Worker(stage, EchoStage())
    try:
        await worker.start()  # consumers, leases and KV work with the stage identity
        await stage.publish(REGION, _frame("victim"))
        await asyncio.sleep(1.0)
        assert await _stored(op) == 2  # the frame and the echo stage's answer

        req = PurgeRequested(session="victim", region=REGION, requested_by="intruder")
        with pytest.raises(Exception):  # noqa: B017 - permission violation: no ack ever comes
            await stage.js.publish(purge_subject(REGION), encode(req), timeout=1)
        with pytest.raises((PurgeError, TimeoutError, Exception)):
            await purge_session(stage, REGION, "victim")
        await asyncio.sleep(0.5)
        assert await _stored(op) == 2, "a stage identity purged data"

        removed = await purge_session(op, REGION, "victim")
        assert removed[streams.audio_stream(REGION)] == 2
        assert await _stored(op) == 0
    finally:
        await worker.stop()
        await tasks.close()
        await stage.close()
        await op.close()


def test_wrong_password_is_refused(secure_server: EmbeddedNats) -> None:
    with socket.create_connection(("127.0.0.1", secure_server.port), timeout=5) as sock:
        assert sock.recv(4096).startswith(b"INFO")
        sock.sendall(b'CONNECT {"user":"stage","pass":"nope","verbose":false}\r\nPING\r\n')
        assert b"Authorization Violation" in sock.recv(4096)
