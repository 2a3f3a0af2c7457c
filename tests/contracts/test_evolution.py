"""Schema evolution: messages of the previous version decode; newer fields are ignored."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

import voxbus.contracts.messages as m
from tests.contracts.make_golden import GOLDEN, SAMPLES, V2_SAMPLES, V3_SAMPLES, V4_SAMPLES

pytestmark = pytest.mark.fast


def test_every_message_type_has_a_golden_sample() -> None:
    tags = {type(s) for s in SAMPLES + V2_SAMPLES + V3_SAMPLES + V4_SAMPLES}
    union_members = set(m.AnyMessage.__args__)
    assert tags == union_members


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_old_versions_bytes_still_decode(name: str) -> None:
    data = Path(__file__).with_name(name).read_bytes()
    encoded = msgspec.msgpack.decode(data, type=list[bytes])
    assert [m.decode(b) for b in encoded] == GOLDEN[name]


class AudioInV0(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="audio.in"):
    """AudioIn as an earlier producer wrote it: no channels, no participant."""

    session: str
    turn: int = 0
    seq: int
    sample_rate_hz: int
    capture_ns: int
    pcm: bytes


class TranscriptV2(msgspec.Struct, frozen=True, kw_only=True, tag_field="type",
                   tag="stt.transcript"):
    """A later producer added a field this version doesn't know."""

    session: str
    turn: int
    seq: int
    text: str
    is_final: bool
    speech_start_ns: int
    confidence: float


def test_old_producer_new_consumer() -> None:
    old = AudioInV0(session="s", seq=1, sample_rate_hz=16000, capture_ns=5, pcm=b"\0\0")
    new = m.decode(msgspec.msgpack.encode(old))
    assert isinstance(new, m.AudioIn)
    assert (new.channels, new.participant, new.pcm) == (1, "", b"\0\0")


def test_new_producer_old_consumer() -> None:
    newer = TranscriptV2(session="s", turn=2, seq=0, text="hi", is_final=True,
                         speech_start_ns=1, confidence=0.9)
    got = m.decode(msgspec.msgpack.encode(newer))
    assert isinstance(got, m.Transcript) and got.text == "hi" and got.turn == 2


def test_unknown_tag_is_a_clear_error() -> None:
    with pytest.raises(msgspec.ValidationError, match="audio.in.v9"):
        m.decode(msgspec.msgpack.encode({"type": "audio.in.v9", "session": "s"}))


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "audio.in", "session": "bad session!", "seq": 0, "sample_rate_hz": 16000,
         "capture_ns": 0, "pcm": b""},
        {"type": "audio.in", "session": "s", "seq": 0, "sample_rate_hz": 1000, "capture_ns": 0,
         "pcm": b""},
        {"type": "audio.in", "session": "s", "seq": -1, "sample_rate_hz": 16000,
         "capture_ns": 0, "pcm": b""},
        {"type": "audio.in", "session": "s", "seq": 0, "sample_rate_hz": 16000, "capture_ns": 0,
         "pcm": b"\0" * (m.MAX_FRAME_BYTES + 1)},
    ],
)
def test_constraints(bad: dict[str, object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        m.decode(msgspec.msgpack.encode(bad))
