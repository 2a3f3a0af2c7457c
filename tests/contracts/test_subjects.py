from __future__ import annotations

import pytest

import voxbus.contracts.messages as m
from voxbus.contracts import streams
from voxbus.contracts.subjects import (
    InvalidSubject,
    Kind,
    parse_subject,
    purge_subject,
    subject,
    subject_for,
)

pytestmark = pytest.mark.fast


def test_subject_shape_and_parse() -> None:
    s = subject("eu-west", "abc_1", Kind.AUDIO_IN)
    assert s == "voxbus.eu-west.abc_1.audio.in"
    assert parse_subject(s) == ("eu-west", "abc_1", Kind.AUDIO_IN, None)
    assert parse_subject("voxbus.eu-west.3.abc_1.ctl.turn").partition == 3


def test_every_session_message_has_a_subject() -> None:
    for t in m.AnyMessage.__args__:
        if t in (m.PurgeRequested, m.PurgeCompleted, m.Sealed):  # (sealed: its message's)
            continue
        subj = subject_for("eu", _sample(t))
        assert subj.startswith("voxbus.eu.s.")


def _sample(t: type[m.Message]) -> m.Message:
    from tests.contracts.make_golden import SAMPLES, V2_SAMPLES, V3_SAMPLES

    sample = next(s for s in SAMPLES + V2_SAMPLES + V3_SAMPLES if type(s) is t)
    return type(sample)(**{**{f: getattr(sample, f) for f in sample.__struct_fields__},
                           "session": "s"})


@pytest.mark.parametrize("region", ["EU", "ops", "", "a.b", "a*"])
def test_bad_regions(region: str) -> None:
    with pytest.raises(InvalidSubject):
        subject(region, "s", Kind.AUDIO_IN)


@pytest.mark.parametrize("session", ["", "a.b", "a b", "x" * 65, ">"])
def test_bad_sessions(session: str) -> None:
    with pytest.raises(InvalidSubject):
        subject("eu", session, Kind.AUDIO_IN)


def test_streams_have_retention_and_cover_every_kind() -> None:
    specs = streams.region_streams("eu")
    assert all(0 < s.max_age_s <= 30 * 86400 for s in specs)
    # what holds sessions expires; agent definitions (no personal data) stay until replaced
    assert all(0 < b.ttl_s for b in streams.region_buckets("eu") if b.holds_sessions)
    for kind in Kind:
        name = streams.stream_of("eu", kind)
        spec = next(s for s in specs if s.name == name)
        published = subject("eu", "s", kind)
        assert any(_matches(p, published) for p in spec.subjects), (kind, spec.subjects)
    assert purge_subject("eu") == "voxbus.ops.eu.purge"


def _matches(pattern: str, subj: str) -> bool:
    p, s = pattern.split("."), subj.split(".")
    if p[-1] == ">":
        return len(s) >= len(p) and all(a in ("*", b) for a, b in zip(p[:-1], s, strict=False))
    return len(p) == len(s) and all(a in ("*", b) for a, b in zip(p, s, strict=True))
