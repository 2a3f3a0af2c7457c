"""The permission matrix: for every identity of region ``eu`` (``voxbus nats --secure``), every
operation that matters, allowed or denied, checked against a real nats-server.

Each operation is one protocol line (``PUB`` or ``SUB``) sent on a raw connection logged in as
the identity, followed by ``PING``: the server answers ``-ERR 'Permissions Violation ...'``
before the ``PONG`` when the identity may not. JetStream and KV calls are publishes to their API
subjects, which is what the server checks. The README's table is rendered from ``MATRIX``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.secure import secure_nats
from voxbus.contracts.control import dispatch_subject
from voxbus.ops.auth import ROLES, Identities
from voxbus.ops.nats import EmbeddedNats

EU, US = "eu", "us"
S = "s1"  # a session id
README = Path(__file__).resolve().parents[1] / "docs" / "security.md"

ALL = frozenset(ROLES)
STAGES = frozenset({"stt", "llm", "tools", "tts"})


@dataclass(frozen=True)
class Op:
    label: str
    verb: str  # "pub" or "sub"
    subject: str
    allowed: frozenset[str]  # roles of region eu that may


def _op(label: str, verb: str, subject: str, *roles: str) -> Op:
    """Allowed to ``roles`` and the operator (``"none"``: to nobody)."""
    return Op(label, verb, subject, frozenset({*roles, "operator"} if roles != ("none",)
                                              else set()))


def _only(label: str, verb: str, subject: str, *roles: str) -> Op:
    """Allowed to ``roles`` alone, not even to the operator."""
    return Op(label, verb, subject, frozenset(roles))


STATE, LEASES, AGENTS = "voxbus_eu_state", "voxbus_eu_leases", "voxbus_eu_agents"
KEYS = "voxbus_eu_keys"
CALL = "c1"  # a tool call id

MATRIX: list[tuple[str, list[Op]]] = [
    ("Session subjects", [
        _op("publish caller audio", "pub", f"voxbus.eu.{S}.audio.in", "bridge"),
        _op("publish agent audio", "pub", f"voxbus.eu.{S}.audio.out", "tts"),
        _op("publish a transcript", "pub", f"voxbus.eu.{S}.stt.transcript", "stt"),
        _op("publish an end of turn", "pub", f"voxbus.eu.{S}.ctl.turn", "stt"),
        _op("publish a reply", "pub", f"voxbus.eu.{S}.llm.reply", "llm"),
        _op("publish an interrupt", "pub", f"voxbus.eu.{S}.ctl.interrupt", "bridge"),
        _op("publish a tool call", "pub", f"voxbus.eu.{S}.tool.call", "llm"),
        _op("publish an error event", "pub", f"voxbus.eu.{S}.ctl.error",
            "stt", "llm", "tools", "tts", "bridge"),
        _op("publish caller audio in another region", "pub", f"voxbus.us.{S}.audio.in", "none"),
        _op("hear caller audio live", "sub", "voxbus.eu.*.audio.in"),
        _op("hear agent audio live", "sub", "voxbus.eu.*.audio.out", "bridge"),
        _op("hear transcripts live", "sub", "voxbus.eu.*.stt.transcript", "bridge", "analytics"),
        _op("hear another region's transcripts", "sub", "voxbus.us.*.stt.transcript", "none"),
    ]),
    ("Inboxes", [
        _op("subscribe to every inbox (`_INBOX.>`)", "sub", "_INBOX.>", "none"),
        _only("subscribe to the TTS worker's inbox", "sub", "_INBOX_tts-eu.>", "tts"),
        _only("subscribe to the operator's inbox", "sub", "_INBOX_operator-eu.>", "operator"),
        _op("publish to another identity's inbox unasked", "pub", "_INBOX_operator-eu.x",
            "none"),
    ]),
    ("Reading streams", [
        _op("direct get from the audio stream (the purger: to find what it erases)", "pub",
            "$JS.API.DIRECT.GET.VOXBUS_EU_AUDIO", "purger"),
        _op("direct get a transcript by subject", "pub",
            f"$JS.API.DIRECT.GET.VOXBUS_EU_TEXT.voxbus.eu.1.{S}.stt.transcript"),
        _op("message get from the control stream", "pub",
            "$JS.API.STREAM.MSG.GET.VOXBUS_EU_CTL"),
        _op("stream info (lists session subjects) of the audio stream", "pub",
            "$JS.API.STREAM.INFO.VOXBUS_EU_AUDIO"),
        _op("direct get a tool call by subject", "pub",
            f"$JS.API.DIRECT.GET.VOXBUS_EU_CTL.voxbus.eu.1.{S}.tool.call"),
        _op("direct get from another region's text stream", "pub",
            "$JS.API.DIRECT.GET.VOXBUS_US_TEXT", "none"),
    ]),
    ("Consumers", [
        _op("create the STT consumer `stt-p0`", "pub",
            "$JS.API.CONSUMER.DURABLE.CREATE.VOXBUS_EU_AUDIO.stt-p0", "stt"),
        _op("pull the TTS work queue (`tts-p0`)", "pub",
            "$JS.API.CONSUMER.MSG.NEXT.VOXBUS_EU_TEXT.tts-p0", "tts"),
        _op("ack a TTS message", "pub", "$JS.ACK.VOXBUS_EU_TEXT.tts-p0.1.1.1.1.0", "tts"),
        _op("create another consumer on the audio stream", "pub",
            "$JS.API.CONSUMER.CREATE.VOXBUS_EU_AUDIO.spy"),
        _op("create an unnamed consumer on the text stream", "pub",
            "$JS.API.CONSUMER.CREATE.VOXBUS_EU_TEXT"),
        _op("pause a stage's consumer", "pub", "$JS.API.CONSUMER.PAUSE.VOXBUS_EU_TEXT.tts-p0"),
        _op("delete a stage's consumer", "pub", "$JS.API.CONSUMER.DELETE.VOXBUS_EU_TEXT.tts-p0"),
        _op("create the tools consumer `tools-p0` (tool calls)", "pub",
            "$JS.API.CONSUMER.DURABLE.CREATE.VOXBUS_EU_CTL.tools-p0", "tools"),
        _op("pull tool calls (`tools-p0`)", "pub",
            "$JS.API.CONSUMER.MSG.NEXT.VOXBUS_EU_CTL.tools-p0", "tools"),
        _op("ack a tool call", "pub", "$JS.ACK.VOXBUS_EU_CTL.tools-p0.1.1.1.1.0", "tools"),
        _op("pull another region's tool calls", "pub",
            "$JS.API.CONSUMER.MSG.NEXT.VOXBUS_US_CTL.tools-p0", "none"),
        _op("create an analytics consumer (`analytics-0`)", "pub",
            "$JS.API.CONSUMER.DURABLE.CREATE.VOXBUS_EU_TEXT.analytics-0", "analytics"),
        _op("create a consumer in another region", "pub",
            "$JS.API.CONSUMER.DURABLE.CREATE.VOXBUS_US_AUDIO.stt-p0", "none"),
    ]),
    ("KV: state and leases", [
        _op("write a conversation (`<session>.llm`)", "pub", f"$KV.{STATE}.{S}.llm", "llm"),
        _op("read a conversation", "pub",
            f"$JS.API.DIRECT.GET.KV_{STATE}.$KV.{STATE}.{S}.llm", "llm"),
        _op("read who the caller is (`<session>.caller`)", "pub",
            f"$JS.API.DIRECT.GET.KV_{STATE}.$KV.{STATE}.{S}.caller", "bridge"),
        _op("write the interrupt watermark", "pub", f"$KV.{STATE}.{S}.interrupted",
            "llm", "tts"),
        _op("write a tombstone (`purged/<session>`)", "pub", f"$KV.{STATE}.purged/{S}",
            "purger"),
        _op("read a tombstone", "pub",
            f"$JS.API.DIRECT.GET.KV_{STATE}.$KV.{STATE}.purged/{S}",
            "stt", "llm", "tools", "tts", "bridge", "purger"),
        _op("take a TTS lease", "pub", f"$KV.{LEASES}.tts.p0", "tts"),
        _op("write another region's conversation", "pub", f"$KV.voxbus_us_state.{S}.llm",
            "none"),
    ]),
    ("Agents and tool outcomes", [
        _op("write a tool outcome (`<session>.tool.<call>`)", "pub",
            f"$KV.{STATE}.{S}.tool.{CALL}", "tools"),
        _op("read a tool outcome", "pub",
            f"$JS.API.DIRECT.GET.KV_{STATE}.$KV.{STATE}.{S}.tool.{CALL}", "llm", "tools"),
        _op("write the session's agent (`<session>.agent`)", "pub", f"$KV.{STATE}.{S}.agent",
            "llm"),
        _op("read the session's agent", "pub",
            f"$JS.API.DIRECT.GET.KV_{STATE}.$KV.{STATE}.{S}.agent", "llm"),
        _op("read an agent definition", "pub",
            f"$JS.API.DIRECT.GET.KV_{AGENTS}.$KV.{AGENTS}.support", "llm", "bridge"),
        _op("write an agent definition", "pub", f"$KV.{AGENTS}.support"),
        _op("read another region's tool outcome", "pub",
            f"$JS.API.DIRECT.GET.KV_voxbus_us_state.$KV.voxbus_us_state.{S}.tool.{CALL}",
            "none"),
        _op("write another region's agent definition", "pub", "$KV.voxbus_us_agents.support",
            "none"),
    ]),
    ("Session keys (crypto-shredding)", [
        _op("make a session's key (`<session>.key`, write once)", "pub", f"$KV.{KEYS}.{S}.key",
            "stt", "llm", "tools", "tts", "bridge"),
        _op("read a session's key", "pub", f"$JS.API.DIRECT.GET.KV_{KEYS}.$KV.{KEYS}.{S}.key",
            "stt", "llm", "tools", "tts", "bridge", "analytics"),
        _op("erase a session's key", "pub", f"$JS.API.STREAM.MSG.DELETE.KV_{KEYS}", "purger"),
        _op("read another region's session key", "pub",
            f"$JS.API.DIRECT.GET.KV_voxbus_us_keys.$KV.voxbus_us_keys.{S}.key", "none"),
    ]),
    ("Streams", [
        _op("purge the audio stream", "pub", "$JS.API.STREAM.PURGE.VOXBUS_EU_AUDIO", "purger"),
        _op("erase a message of the audio stream", "pub",
            "$JS.API.STREAM.MSG.DELETE.VOXBUS_EU_AUDIO", "purger"),
        _op("purge the lease bucket", "pub", f"$JS.API.STREAM.PURGE.KV_{LEASES}"),
        _op("delete a stream", "pub", "$JS.API.STREAM.DELETE.VOXBUS_EU_AUDIO"),
        _op("create or update a stream", "pub", "$JS.API.STREAM.UPDATE.VOXBUS_EU_AUDIO"),
        _op("purge another region's stream", "pub", "$JS.API.STREAM.PURGE.VOXBUS_US_AUDIO",
            "none"),
    ]),
    ("Purge and dispatch", [
        _op("request a purge", "pub", "voxbus.ops.eu.purge"),
        _op("pull purge requests", "pub", "$JS.API.CONSUMER.MSG.NEXT.VOXBUS_EU_OPS.purger",
            "purger"),
        _op("read the ops stream", "pub", "$JS.API.DIRECT.GET.VOXBUS_EU_OPS"),
        _op("report a purge done", "pub", "voxbus.ops.eu.purged", "purger"),
        _op("announce a purge to the workers", "pub", "voxbus.eu.purging", "purger"),
        _op("hear purge announcements", "sub", "voxbus.eu.purging",
            "stt", "llm", "tools", "tts", "bridge", "analytics"),
        _op("request a purge in another region", "pub", "voxbus.ops.us.purge", "none"),
        _op("send the agent into a room", "pub", dispatch_subject(EU)),
        _op("serve dispatch requests", "sub", dispatch_subject(EU), "bridge"),
    ]),
]


def render_table() -> str:
    """The matrix as the README shows it."""
    roles = list(ROLES)
    lines = ["| operation | " + " | ".join(roles) + " |",
             "|---|" + "---|" * len(roles)]
    for group, ops in MATRIX:
        lines.append(f"| **{group}** |" + " |" * len(roles))
        for op in ops:
            cells = ["✓" if r in op.allowed else "·" for r in roles]
            lines.append(f"| {op.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


class RawClient:
    """One NATS protocol connection logged in as one identity."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.sid = 0

    @classmethod
    async def login(cls, port: int, user: str, password: str) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        c = cls(reader, writer)
        assert (await reader.readline()).startswith(b"INFO")
        connect = {"user": user, "pass": password, "verbose": False, "pedantic": False,
                   "protocol": 1, "headers": True}
        errors = await c._round_trip(f"CONNECT {json.dumps(connect)}\r\n")
        assert not errors, errors
        return c

    async def _round_trip(self, lines: str) -> list[str]:
        self.writer.write((lines + "PING\r\n").encode())
        await self.writer.drain()
        errors: list[str] = []
        async with asyncio.timeout(5):
            while (line := (await self.reader.readline()).decode().strip()) != "PONG":
                if line.startswith("-ERR"):
                    errors.append(line)
                elif line.startswith(("MSG", "HMSG")):  # skip what a probe's own sub received
                    size = int(line.split()[-1])
                    await self.reader.readexactly(size + 2)
        return errors

    async def allowed(self, op: Op) -> bool:
        if op.verb == "pub":
            line = f"PUB {op.subject} 0\r\n\r\n"
        else:
            self.sid += 1
            line = f"SUB {op.subject} {self.sid}\r\nUNSUB {self.sid}\r\n"
        errors = await self._round_trip(line)
        assert all("Permissions Violation" in e for e in errors), errors
        return not errors

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> Identities:
    return Identities.load_or_create(tmp_path_factory.mktemp("ids"), [EU, US])


@pytest.fixture(scope="module")
def secure_server(identities: Identities, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[EmbeddedNats]:
    with secure_nats(identities, tmp_path_factory.mktemp("conf") / "auth.conf") as server:
        yield server


@pytest.fixture
async def login(secure_server: EmbeddedNats, identities: Identities
                ) -> AsyncIterator[dict[str, RawClient]]:
    clients = {role: await RawClient.login(secure_server.port, i.user, i.password)
               for role in ROLES for i in [identities.get(role, EU)]}
    try:
        yield clients
    finally:
        for c in clients.values():
            await c.close()


async def test_every_identity_may_do_exactly_what_its_role_needs(
    login: dict[str, RawClient], identities: Identities
) -> None:
    wrong: list[str] = []
    for _group, ops in MATRIX:
        for op in ops:
            for role, client in login.items():
                got = await client.allowed(op)
                if got != (role in op.allowed):
                    wrong.append(f"{role}: {op.label} ({op.verb} {op.subject}) "
                                 f"{'allowed' if got else 'denied'}")
    for role, client in login.items():  # and each may listen on its own inbox
        own = identities.get(role, EU).inbox_prefix
        if not await client.allowed(Op("own inbox", "sub", f"{own}.>", ALL)):
            wrong.append(f"{role}: its own inbox denied")
    assert not wrong, "\n".join(wrong)


async def test_a_region_s_identities_reach_nothing_of_another_region(
    secure_server: EmbeddedNats, identities: Identities
) -> None:
    """The US identities, probed with the EU operations: none is allowed anything of EU."""
    for role in ROLES:
        i = identities.get(role, US)
        client = await RawClient.login(secure_server.port, i.user, i.password)
        try:
            for _group, ops in MATRIX:
                for op in ops:
                    if ".eu." in op.subject or "_EU_" in op.subject or "_eu_" in op.subject:
                        assert not await client.allowed(op), (i.user, op.label)
        finally:
            await client.close()


@pytest.mark.fast
def test_the_readme_shows_the_matrix() -> None:
    assert render_table() in README.read_text(), (
        "README's permission table is out of date; paste this:\n" + render_table())


@pytest.mark.fast
def test_stage_roles_consume_what_the_stages_take() -> None:
    """The permissions are written from ``ROLES``; the stages declare what they consume."""
    from voxbus.services.llm.stage import LlmStage
    from voxbus.services.stt.stage import SttStage
    from voxbus.services.tools.stage import ToolsStage
    from voxbus.services.tts.stage import TtsStage

    for stage in (SttStage, LlmStage, ToolsStage, TtsStage):
        assert set(ROLES[stage.name].consumes) == {*stage.inputs, *stage.urgent}, stage.name
    assert STAGES <= ALL
