"""Subject names: pure functions of region, session and message kind.

Session subjects are ``voxbus.<region>.<session>.<stage>.<kind>`` (five tokens). Inside a
region's streams the server inserts a partition token
(``voxbus.<region>.<partition>.<session>.<stage>.<kind>``, see ``contracts.streams``) so stage
replicas can split the work by partition.
Operator subjects are ``voxbus.ops.<region>.<verb>``.
"""

from __future__ import annotations

import enum
import re
from typing import Final, NamedTuple

from voxbus.contracts import messages as m

PREFIX: Final = "voxbus"
OPS: Final = "ops"
REGION_PATTERN: Final = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_SESSION_RE: Final = re.compile(m.SESSION_PATTERN)


class Kind(enum.StrEnum):
    """The ``<stage>.<kind>`` tail of a session subject."""

    AUDIO_IN = "audio.in"
    AUDIO_OUT = "audio.out"
    TRANSCRIPT = "stt.transcript"
    REPLY = "llm.reply"
    SESSION = "ctl.session"
    SPEECH = "ctl.speech"
    TURN = "ctl.turn"
    INTERRUPT = "ctl.interrupt"
    SPOKEN = "ctl.spoken"
    ERROR = "ctl.error"
    TOOL_CALL = "tool.call"

    @property
    def stage(self) -> str:
        return self.value.split(".", 1)[0]


_KIND_OF: Final[dict[type[m.Message], Kind]] = {
    m.AudioIn: Kind.AUDIO_IN,
    m.AudioOut: Kind.AUDIO_OUT,
    m.Transcript: Kind.TRANSCRIPT,
    m.ReplyText: Kind.REPLY,
    m.ReplyEnd: Kind.REPLY,
    m.SessionStarted: Kind.SESSION,
    m.SessionEnded: Kind.SESSION,
    m.UserStartedSpeaking: Kind.SPEECH,
    m.UserStoppedSpeaking: Kind.SPEECH,
    m.EndOfTurn: Kind.TURN,
    m.TurnResumed: Kind.TURN,
    m.Interrupt: Kind.INTERRUPT,
    m.AgentSpoke: Kind.SPOKEN,
    m.ErrorEvent: Kind.ERROR,
    m.ToolCall: Kind.TOOL_CALL,
}


class InvalidSubject(ValueError):
    pass


class SessionSubject(NamedTuple):
    region: str
    session: str
    kind: Kind
    partition: int | None = None


def check_region(region: str) -> str:
    if region == OPS or not REGION_PATTERN.match(region):
        raise InvalidSubject(f"invalid region name {region!r}: lowercase letters, digits, '-'")
    return region


def check_session(session: str) -> str:
    if not _SESSION_RE.match(session):
        raise InvalidSubject(f"invalid session id {session!r}: 1-64 of [A-Za-z0-9_-]")
    return session


def kind_of(msg_type: type[m.Message]) -> Kind:
    try:
        return _KIND_OF[msg_type]
    except KeyError:
        raise InvalidSubject(f"{msg_type.__name__} is not a session message") from None


def subject(region: str, session: str, kind: Kind) -> str:
    return f"{PREFIX}.{check_region(region)}.{check_session(session)}.{kind.value}"


def subject_for(region: str, msg: m.Message) -> str:
    """The subject a session message is published on."""
    return subject(region, msg.session, kind_of(type(msg)))


def session_wildcard(region: str, session: str) -> str:
    """Every session subject of one session, as published (five tokens)."""
    return f"{PREFIX}.{check_region(region)}.{check_session(session)}.>"


def stored_session_wildcard(region: str, session: str) -> str:
    """Every stored subject of one session inside the region's partitioned streams."""
    return f"{PREFIX}.{check_region(region)}.*.{check_session(session)}.>"


def partition_of(session: str, partitions: int) -> int:
    """The partition the server's subject transform puts ``session`` in (``partition(n,1)``:
    FNV-1a, 32 bit, of the session token): where an operator looks for its lease."""
    h = 2166136261
    for byte in check_session(session).encode():
        h = ((h ^ byte) * 16777619) & 0xFFFFFFFF
    return h % partitions


def partition_filter(region: str, partition: int, kind: Kind) -> str:
    """A consumer filter for one partition and kind inside a partitioned stream."""
    return f"{PREFIX}.{check_region(region)}.{partition}.*.{kind.value}"


def parse_subject(subj: str) -> SessionSubject:
    """Parse a published (5 tokens) or stored (6 tokens, with partition) session subject."""
    tokens = subj.split(".")
    partition: int | None = None
    if len(tokens) == 6 and tokens[2].isdigit():
        partition = int(tokens.pop(2))
    if len(tokens) != 5 or tokens[0] != PREFIX:
        raise InvalidSubject(f"not a voxbus session subject: {subj!r}")
    _, region, session, stage, kind = tokens
    try:
        k = Kind(f"{stage}.{kind}")
    except ValueError:
        raise InvalidSubject(f"unknown kind {stage}.{kind!r} in {subj!r}") from None
    return SessionSubject(check_region(region), check_session(session), k, partition)


def purge_subject(region: str) -> str:
    """Operators publish ``PurgeRequested`` here."""
    return f"{PREFIX}.{OPS}.{check_region(region)}.purge"


def tombstone_subject(region: str) -> str:
    """The purger announces here (core NATS, the session id as the payload) that a session is
    being purged: every worker and bridge holding it stops at once (three tokens: no stream
    stores it)."""
    return f"{PREFIX}.{check_region(region)}.purging"


def purged_subject(region: str) -> str:
    """The purge service publishes ``PurgeCompleted`` here."""
    return f"{PREFIX}.{OPS}.{check_region(region)}.purged"
