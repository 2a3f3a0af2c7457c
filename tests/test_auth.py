"""The identities at work on a real nats-server: the purger erases what the operator asks it to
and a stage identity can do neither; a process refuses another role's or region's identity
before it connects; a wrong password is refused."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.js.errors import KeyNotFoundError

from tests.secure import connect_as, secure_nats
from voxbus.contracts import encode, streams
from voxbus.contracts.messages import AudioIn, PurgeRequested
from voxbus.contracts.subjects import purge_subject
from voxbus.ops.auth import Identities
from voxbus.ops.nats import EmbeddedNats
from voxbus.ops.purge import PurgeService, purge_session, request_purge
from voxbus.runtime.bus import Bus
from voxbus.runtime.settings import BusSettings, SettingsError
from voxbus.runtime.tasks import TaskSet

REGION = "eu"


@pytest.fixture
def ids(tmp_path: Path) -> Identities:
    return Identities.load_or_create(tmp_path / "ids", [REGION, "us"])


@pytest.fixture
def secure_server(tmp_path: Path, ids: Identities) -> Iterator[EmbeddedNats]:
    with secure_nats(ids, tmp_path / "nats.conf", partitions=4) as server:
        yield server


async def _connect(server: EmbeddedNats, ids: Identities, role: str) -> Bus:
    return await connect_as(server, ids, role, REGION, partitions=4)


def _frame(session: str, seq: int) -> AudioIn:
    return AudioIn(session=session, seq=seq, sample_rate_hz=16000, capture_ns=time.time_ns(),
                   pcm=b"\0\0" * 160)


async def _stored(bus: Bus) -> int:
    info = await bus.js.stream_info(streams.audio_stream(REGION))
    return info.state.messages


async def test_only_the_purger_erases_and_only_the_operator_asks(
    secure_server: EmbeddedNats, ids: Identities
) -> None:
    op = await _connect(secure_server, ids, "operator")
    await op.provision()
    bridge = await _connect(secure_server, ids, "bridge")
    purger = await _connect(secure_server, ids, "purger")
    stt = await _connect(secure_server, ids, "stt")
    tasks = TaskSet("auth-test")
    tasks.spawn(PurgeService(purger).run())
    try:
        for seq in range(3):  # the bridge's identity publishes caller audio
            await bridge.publish(REGION, _frame("victim", seq), ack=True)
        assert await _stored(op) == 3

        req = PurgeRequested(session="victim", region=REGION, requested_by="intruder")
        with pytest.raises(Exception):  # noqa: B017 - permission violation: no ack ever comes
            await stt.js.publish(purge_subject(REGION), encode(req), timeout=1)
        with pytest.raises(Exception):  # noqa: B017 - the tombstone write is refused
            await purge_session(stt, REGION, "victim", grace_s=0)
        await asyncio.sleep(0.3)
        assert await _stored(op) == 3, "a stage identity purged data"

        done = await request_purge(op, REGION, "victim")  # the purger identity does it
        assert done.removed[streams.audio_stream(REGION)] == 3
        assert await _stored(op) == 0
    finally:
        await tasks.close()
        for bus in (stt, purger, bridge, op):
            await bus.close()


@pytest.mark.fast
def test_a_process_refuses_an_identity_that_is_not_its_own(ids: Identities,
                                                           tmp_path: Path) -> None:
    llm = str(ids.path("llm-eu"))
    settings = BusSettings.from_env({"VOXBUS_CREDENTIALS": llm})
    assert settings.regions == (REGION,) and settings.inbox_prefix == "_INBOX_llm-eu"
    settings.require_role("llm")
    with pytest.raises(SettingsError, match="'llm' identity .*needs 'stt'"):
        settings.require_role("stt")
    with pytest.raises(SettingsError, match=r"no identity for region\(s\) us"):
        BusSettings.from_env({"VOXBUS_CREDENTIALS": llm, "VOXBUS_REGIONS": "eu,us"})
    with pytest.raises(SettingsError, match="serves region 'eu', not VOXBUS_REGIONS=us"):
        BusSettings.from_env({"VOXBUS_CREDENTIALS": llm, "VOXBUS_REGION": "us"})
    with pytest.raises(SettingsError, match="VOXBUS_CREDENTIALS_US holds llm-eu"):
        BusSettings.from_env({"VOXBUS_CREDENTIALS_US": llm, "VOXBUS_REGIONS": "eu,us"})
    # a process of two regions: each region's own identity and servers
    both = BusSettings.from_env({
        "VOXBUS_CREDENTIALS": llm, "VOXBUS_CREDENTIALS_US": str(ids.path("llm-us")),
        "VOXBUS_REGIONS": "eu,us", "NATS_URL_US": "nats://10.0.0.2:4222"})
    eu, us = both.per_region()
    assert (eu.regions, eu.user, eu.url) == (("eu",), "llm-eu", "nats://127.0.0.1:4222")
    assert (us.regions, us.user, us.url) == (("us",), "llm-us", "nats://10.0.0.2:4222")
    assert us.inbox_prefix == "_INBOX_llm-us"
    with pytest.raises(SettingsError, match="cannot read credentials"):
        BusSettings.from_env({"VOXBUS_CREDENTIALS": str(tmp_path / "missing.json")})
    (tmp_path / "bad.json").write_text('{"user": 1}')
    with pytest.raises(SettingsError, match="not a voxbus identity file"):
        BusSettings.from_env({"VOXBUS_CREDENTIALS": str(tmp_path / "bad.json")})


def test_wrong_password_is_refused(secure_server: EmbeddedNats) -> None:
    with socket.create_connection(("127.0.0.1", secure_server.port), timeout=5) as sock:
        assert sock.recv(4096).startswith(b"INFO")
        sock.sendall(b'CONNECT {"user":"stt-eu","pass":"nope","verbose":false}\r\nPING\r\n')
        assert b"Authorization Violation" in sock.recv(4096)


async def test_a_tool_worker_runs_calls_as_its_identity_and_touches_nothing_else(
    secure_server: EmbeddedNats, ids: Identities
) -> None:
    """The tools worker, logged in as ``tools-eu``, runs a call the ``llm-eu`` identity publishes
    and keeps its outcome, with no permission violation. Then the refusals, each proven by the
    server's log and by what is (not) stored: ``tools-eu`` writes no state key but
    ``<session>.tool.*`` (not ``<session>.llm``, not ``<session>.agent``) and no agent
    definition; ``llm-eu`` writes no outcome; ``tools-us`` neither pulls, hears nor reads the
    tool calls and outcomes of ``eu``."""
    import nats.errors

    from voxbus.agents.outcomes import ToolOutcomes
    from voxbus.agents.tool import tool
    from voxbus.contracts.messages import ToolCall
    from voxbus.runtime.worker import Worker
    from voxbus.services.tools.stage import ToolsStage

    @tool
    async def lookup(order: str) -> dict[str, str]:
        """Find an order."""
        return {"order": order, "status": "shipped"}

    state, agents = streams.state_bucket(REGION), streams.agents_bucket(REGION)
    op = await _connect(secure_server, ids, "operator")
    await op.provision()
    us_op = await connect_as(secure_server, ids, "operator", "us", partitions=4)
    await us_op.provision()
    tools = await _connect(secure_server, ids, "tools")
    llm = await _connect(secure_server, ids, "llm")
    tools_us = await connect_as(secure_server, ids, "tools", "us", partitions=4)
    worker = Worker(tools, ToolsStage({"lookup": lookup}, replica="t1"))
    await worker.start()
    log = secure_server.log_file

    def violations() -> list[str]:
        return [line for line in log.read_text().splitlines() if "Violation" in line]

    try:
        await llm.publish(REGION, ToolCall(session="s1", call_id="c1", agent="support",
                                           tool="lookup", arguments='{"order": "A7"}'))
        outcome = await ToolOutcomes(await llm.state(REGION)).wait("s1", "c1", timeout_s=10)
        assert outcome is not None and outcome.ok, outcome
        assert json.loads(outcome.result) == {"order": "A7", "status": "shipped"}
        assert not violations(), "\n".join(violations())

        op_state, op_agents = await op.kv(state), await op.kv(agents)
        await op_state.put("s1.llm", b"history")
        denied = [  # (identity, subject of a KV write)
            (tools, f"$KV.{state}.s1.llm"), (tools, f"$KV.{state}.s1.agent"),
            (tools, f"$KV.{state}.s1.stt"), (tools, f"$KV.{agents}.support"),
            (llm, f"$KV.{state}.s1.tool.c2"), (tools_us, f"$KV.{state}.s1.tool.c3"),
        ]
        for bus, subject in denied:
            with pytest.raises(nats.errors.TimeoutError):  # refused: no ack ever comes
                await bus.js.publish(subject, b"forged", timeout=0.5)
        assert (await op_state.get("s1.llm")).value == b"history"
        for key in ("s1.agent", "s1.stt", "s1.tool.c2", "s1.tool.c3"):
            with pytest.raises(KeyNotFoundError):
                await op_state.get(key)
        with pytest.raises(KeyNotFoundError):
            await op_agents.get("support")

        ctl = streams.control_stream(REGION)
        probes = [
            f"$JS.API.CONSUMER.MSG.NEXT.{ctl}.tools-p0",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{ctl}.tools-p0",
            f"$JS.API.DIRECT.GET.{ctl}",
            f"$JS.API.DIRECT.GET.KV_{state}.$KV.{state}.s1.tool.c1",
        ]
        for subject in probes:  # the us tools identity asks for eu's calls and outcomes
            with pytest.raises(nats.errors.TimeoutError):
                await tools_us.nc.request(subject, b"", timeout=0.5)
        await tools_us.nc.subscribe(f"voxbus.{REGION}.*.tool.call")
        await tools_us.nc.flush()
        await asyncio.sleep(0.2)
        seen = "\n".join(violations())
        for user, subject in [*((b.nc.options["user"], s) for b, s in denied),
                              *(("tools-us", s) for s in probes),
                              ("tools-us", f"voxbus.{REGION}.*.tool.call")]:
            assert any(user in line and subject in line for line in violations()), (
                user, subject, seen)
        # the worker's own identity still reads what it keeps
        kept = await ToolOutcomes(await tools.state(REGION)).get("s1", "c1")
        assert kept is not None and kept.replica == "t1"
    finally:
        await worker.stop()
        for bus in (tools_us, llm, tools, us_op, op):
            await bus.close()
