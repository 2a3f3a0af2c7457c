"""Crypto-shredding (``contracts.sealing``) on a real nats-server: a session's payloads are
stored sealed under its own key, which lives in the servers' memory only; a purge erases the key
first, and then no copy of the session anywhere opens, not even a copy of the whole store taken
before the purge, tried with every key still on the bus. A bystander opens. Permissions: the
session's own identities read its key, another region's do not, and analytics only while the
session lives."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from nats.js.errors import NotFoundError

from tests.secure import connect_as, secure_nats
from voxbus.contracts import streams
from voxbus.contracts.messages import (
    AnyMessage,
    AudioIn,
    EndOfTurn,
    ReplyEnd,
    Sealed,
    ToolCall,
    Transcript,
    decode,
)
from voxbus.contracts.sealing import SealError, key_name, unseal
from voxbus.ops.auth import Identities
from voxbus.ops.nats import EmbeddedNats
from voxbus.ops.purge import purge_session
from voxbus.runtime.bus import Bus
from voxbus.runtime.testing import stored

REGION = "test"


def _words(session: str) -> dict[str, bytes]:
    return {"said": f"museum-tickets-for-{session}".encode(),
            "reply": f"jacket-left-at-{session}".encode(),
            "tool": f"card-of-{session}".encode(),
            "history": f"history-of-{session}".encode()}


async def _talk(bus: Bus, session: str) -> None:
    """A session as the stages would leave it: audio, words, a reply, a tool call, and a
    conversation rewritten three times (two superseded revisions)."""
    w = {k: v.decode() for k, v in _words(session).items()}
    await bus.publish(REGION, AudioIn(session=session, seq=0, sample_rate_hz=16000,
                                      capture_ns=1, pcm=b"\x11\x22" * 160), ack=True)
    await bus.publish(REGION, Transcript(session=session, turn=1, seq=0, text=w["said"],
                                         is_final=True, speech_start_ns=1))
    await bus.publish(REGION, EndOfTurn(session=session, turn=1, transcript=w["said"],
                                        speech_start_ns=1, speech_end_ns=2))
    await bus.publish(REGION, ReplyEnd(session=session, turn=1, text=w["reply"]))
    await bus.publish(REGION, ToolCall(session=session, call_id="t1-c0", agent="desk",
                                       tool="book", arguments=f'{{"card": "{w["tool"]}"}}'))
    state = await bus.state(REGION)
    for n in range(3):
        await state.put(f"{session}.llm", f"{w['history']} turn {n}".encode())


def _plain(directory: Path, needles: dict[str, bytes]) -> list[str]:
    """The files under ``directory`` holding any of ``needles`` in plain text."""
    return sorted(f"{p.relative_to(directory)}: {k}" for p in directory.rglob("*") if p.is_file()
                  for k, n in needles.items() if n in p.read_bytes())


async def _every_key(bus: Bus) -> dict[str, bytes]:
    kv = await bus.kv(streams.keys_bucket(REGION))
    out = {}
    for name in await kv.keys():
        out[name.removesuffix(".key")] = (await kv.get(name)).value or b""
    return out


async def _stored_sealed(bus: Bus) -> list[Sealed]:
    names = [spec.name for spec in streams.region_streams(REGION, partitions=bus.partitions)]
    out = []
    for name in names:
        for _subject, data in await stored(bus, name):
            if isinstance(msg := decode(data), Sealed):
                out.append(msg)
    return out


def _opens(msg: Sealed, keys: dict[str, bytes]) -> list[AnyMessage]:
    """What ``msg`` opens to with each of ``keys`` (normally one, or none)."""
    opened = []
    for key in keys.values():
        try:
            opened.append(unseal(msg, key))
        except SealError:
            pass
    return opened


async def test_a_purge_leaves_no_copy_that_opens_not_even_a_backup(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    await _talk(bus, "victim")
    await _talk(bus, "bystander")
    store = nats_server.store_dir
    assert store is not None
    words = {**_words("victim"), **{f"b-{k}": v for k, v in _words("bystander").items()}}
    # sealed from the start: nothing personal in plain text on disk, before any purge
    assert _plain(store / "jetstream", words) == []
    # the keys live in memory only: the store holds no key of either session
    keys_before = await _every_key(bus)
    assert set(keys_before) == {"victim", "bystander"}
    assert not [p for p in (store / "jetstream").rglob("*") if p.is_file()
                and any(v in p.read_bytes() for v in keys_before.values())], "a key on disk"

    backup = tmp_path / "backup"  # the whole store, copied as a backup would, before the purge
    shutil.copytree(store / "jetstream", backup / "jetstream")

    removed = await purge_session(bus, REGION, "victim", grace_s=0)
    assert removed[f"KV_{streams.keys_bucket(REGION)}"] == 1
    keys_after = await _every_key(bus)
    assert set(keys_after) == {"bystander"}
    assert keys_after["bystander"] == keys_before["bystander"]

    # the backup, served by a server of its own: the victim's messages are there, and none
    # opens with any key still on the bus; the bystander's open with theirs
    restored = EmbeddedNats(store_dir=backup).start()
    try:
        old = await Bus.connect(restored.url, regions=[REGION], partitions=bus.partitions,
                                name="backup-reader")
        try:
            sealed = await _stored_sealed(old)
            with pytest.raises(NotFoundError):  # no key came back with the backup
                await (await old.kv(streams.keys_bucket(REGION))).get(key_name("victim"))
            state = await old.kv(streams.state_bucket(REGION))
            history = (await state.get("victim.llm")).value or b""
        finally:
            await old.close()
    finally:
        restored.stop()
    victims = [m for m in sealed if m.session == "victim"]
    bystanders = [m for m in sealed if m.session == "bystander"]
    assert len(victims) >= 5 and len(bystanders) >= 5, (len(victims), len(bystanders))
    assert all(_opens(m, keys_after) == [] for m in victims)
    assert all(_opens(m, keys_before)[0].session == "victim" for m in victims)  # (the keys
    # were right: with the erased key they would open)
    said = [o for m in bystanders for o in _opens(m, keys_after)]
    assert len(said) == len(bystanders)
    assert any(isinstance(o, Transcript) and o.text == "museum-tickets-for-bystander"
               for o in said)
    # the conversation in the backup (its superseded revisions too: the plain-text search
    # above read every file): ciphertext that no key left opens
    from voxbus.contracts.sealing import Sealer

    assert history.startswith(b"\x00vxs1")
    for session, key in keys_after.items():
        with pytest.raises(SealError):
            Sealer(session, key).open_value("victim.llm", history)
    assert Sealer("victim", keys_before["victim"]).open_value("victim.llm", history) == (
        b"history-of-victim turn 2")
    # and the live store: nothing of the victim in plain text, the bystander still sealed
    assert _plain(store / "jetstream", words) == []


async def test_a_worker_reads_a_key_only_in_its_own_region_and_analytics_only_while_it_lives(
    tmp_path: Path,
) -> None:
    ids = Identities.load_or_create(tmp_path / "ids", ["test", "us"])
    with secure_nats(ids, tmp_path / "nats.conf") as server:
        op = await connect_as(server, ids, "operator", REGION, partitions=4)
        await op.provision()
        us_op = await connect_as(server, ids, "operator", "us", partitions=4)
        await us_op.provision()
        bridge = await connect_as(server, ids, "bridge", REGION, partitions=4)
        analytics = await connect_as(server, ids, "analytics", REGION, partitions=4)
        stt_us = await connect_as(server, ids, "stt", "us", partitions=4)
        purger = await connect_as(server, ids, "purger", REGION, partitions=4)
        buses = [op, us_op, bridge, analytics, stt_us, purger]
        try:
            # the bridge starts the session: its key is made, and what it says is sealed
            await bridge.publish(REGION, AudioIn(session="s1", seq=0, sample_rate_hz=16000,
                                                 capture_ns=1, pcm=b"\1\0" * 160), ack=True)
            key = bridge.keys.cached(REGION, "s1")
            assert key is not None
            assert (await analytics.keys.sealer(REGION, "s1", create=False)) is not None
            # another region's worker: refused (no key, nothing made)
            kv_name = streams.keys_bucket(REGION)
            with pytest.raises(Exception):  # noqa: B017 - refused, in whatever words
                await (await stt_us.kv(kv_name)).get(key_name("s1"))
            # analytics may read, not write
            analytics_kv = await analytics.kv(kv_name)
            with pytest.raises(Exception):  # noqa: B017
                await analytics_kv.put(key_name("s2"), b"\0" * 32)
            # write once: even the bridge cannot replace a key
            with pytest.raises(Exception):  # noqa: B017
                await (await bridge.kv(kv_name)).put(key_name("s1"), b"\0" * 32)
            assert (await analytics_kv.get(key_name("s1"))).value == key.key
            await purge_session(purger, REGION, "s1", grace_s=0)
            with pytest.raises(NotFoundError):
                await analytics_kv.get(key_name("s1"))
            analytics.keys.forget("s1")
            assert (await analytics.keys.sealer(REGION, "s1", create=False)) is None
        finally:
            for b in buses:
                await b.close()
