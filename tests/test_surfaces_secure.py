"""The operator and analytics surfaces under their own identities on a server that requires
them (``voxbus nats --secure``): ``voxbus transcripts`` as analytics-eu reads the region's
finals through its durable reader; ``voxbus top`` as operator-eu sees the region; another role's
identity is refused with one line before anything connects."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.secure import connect_as, secure_nats
from voxbus.contracts.messages import Transcript
from voxbus.ops.auth import Identities
from voxbus.ops.nats import EmbeddedNats
from voxbus.runtime.bus import Bus

EU = "eu"


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> Identities:
    return Identities.load_or_create(tmp_path_factory.mktemp("ids"), [EU])


@pytest.fixture(scope="module")
def secure(identities: Identities, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[EmbeddedNats]:
    with secure_nats(identities, tmp_path_factory.mktemp("conf") / "auth.conf") as server:
        yield server


async def _as(identities: Identities, server: EmbeddedNats, role: str) -> Bus:
    return await connect_as(server, identities, role, EU)


@pytest.fixture
async def stt_bus(identities: Identities, secure: EmbeddedNats) -> AsyncIterator[Bus]:
    operator = await _as(identities, secure, "operator")
    await operator.provision()
    await operator.close()
    bus = await _as(identities, secure, "stt")
    try:
        yield bus
    finally:
        await bus.close()


async def _run(identities: Identities, server: EmbeddedNats, role: str, *args: str
               ) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXBUS_")}
    env |= {"NATS_URL": server.url, "VOXBUS_CREDENTIALS": str(identities.path(f"{role}-{EU}"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voxbus.cli", *args, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_analytics_reads_transcripts_and_the_operator_runs_top(
    identities: Identities, secure: EmbeddedNats, stt_bus: Bus
) -> None:
    now = time.time_ns()
    await stt_bus.publish(EU, Transcript(session="sec1", turn=1, seq=0, text="Hello there.",
                                         is_final=True, speech_start_ns=now))
    rc, out, err = await _run(identities, secure, "analytics", "transcripts", "--jsonl")
    assert rc == 0, err
    assert [(r["session"], r["text"]) for r in map(json.loads, out.splitlines())] == [
        ("sec1", "Hello there.")]
    rc, out, err = await _run(identities, secure, "operator", "top", "--once")
    assert rc == 0, err
    assert any(line.split()[:2] == [EU, "llm"] for line in out.splitlines()), out


@pytest.mark.parametrize(("role", "cmd"), [("stt", "transcripts"), ("analytics", "top")])
async def test_another_role_is_refused_in_one_line(
    identities: Identities, secure: EmbeddedNats, role: str, cmd: str
) -> None:
    rc, _, err = await _run(identities, secure, role, cmd,
                            "--once" if cmd == "top" else "--jsonl")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and f"{role}-{EU}" in lines[0], lines
