"""Sealed payloads (``contracts.sealing``): what opens, and what does not."""

from __future__ import annotations

import os

import pytest

import voxbus.contracts.messages as m
from voxbus.contracts.sealing import (
    KEY_BYTES,
    Sealer,
    SealError,
    is_sealed_value,
    seals,
    unseal,
)

pytestmark = pytest.mark.fast


def _said(session: str = "s1") -> m.Transcript:
    return m.Transcript(session=session, turn=2, seq=3, text="a table for four",
                        is_final=True, speech_start_ns=1, emitted_ns=99)


def test_a_sealed_message_keeps_what_routing_reads_and_hides_the_rest() -> None:
    sealer = Sealer("s1", os.urandom(KEY_BYTES))
    sealed = sealer.seal(_said())
    assert (sealed.session, sealed.turn, sealed.kind, sealed.seq, sealed.at_ns) == (
        "s1", 2, "stt.transcript", 3, 99)
    wire = m.encode(sealed)
    assert b"a table" not in wire
    assert m.decode(wire) == sealed
    assert sealer.open(m.decode(wire)) == _said()  # type: ignore[arg-type]
    assert unseal(sealed, sealer.key) == _said()


def test_it_opens_with_its_session_s_key_only_and_not_once_changed() -> None:
    key = os.urandom(KEY_BYTES)
    sealed = Sealer("s1", key).seal(_said())
    with pytest.raises(SealError):
        Sealer("s1", os.urandom(KEY_BYTES)).open(sealed)
    with pytest.raises(SealError):  # another session's sealer, even with the same bytes
        Sealer("s2", key).open(sealed)
    moved = m.Sealed(session="s1", turn=5, kind=sealed.kind, seq=sealed.seq, box=sealed.box)
    with pytest.raises(SealError):  # its place is bound in: moved to another turn
        Sealer("s1", key).open(moved)
    flipped = bytearray(sealed.box)
    flipped[-1] ^= 1
    with pytest.raises(SealError):
        Sealer("s1", key).open(m.Sealed(session="s1", turn=2, kind=sealed.kind, seq=3,
                                        box=bytes(flipped)))
    with pytest.raises(SealError):  # a message of another session cannot be sealed with it
        Sealer("s1", key).seal(_said("s2"))


def test_state_values_are_sealed_under_their_key_name() -> None:
    sealer = Sealer("s1", os.urandom(KEY_BYTES))
    value = sealer.seal_value("s1.llm", b"history of s1")
    assert is_sealed_value(value) and b"history" not in value
    assert sealer.open_value("s1.llm", value) == b"history of s1"
    assert sealer.open_value("s1.llm", b"{}") == b"{}"  # never sealed: as it is
    with pytest.raises(SealError):
        sealer.open_value("s1.caller", value)


def test_what_is_sealed_and_what_stays_clear() -> None:
    assert seals(_said()) and seals(m.AudioIn(session="s", seq=0, sample_rate_hz=16000,
                                              capture_ns=0, pcm=b""))
    assert not seals(m.Interrupt(session="s", turn=1, at_ns=0))
    assert not seals(m.ErrorEvent(session="s", code="x", message="y"))
    with pytest.raises(SealError):
        Sealer("s", b"short")
