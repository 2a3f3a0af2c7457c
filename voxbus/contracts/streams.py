"""JetStream streams and KV buckets per region, each with a retention limit.

Session streams store subjects with a partition token inserted by the server
(``voxbus.<r>.<session>.<stage>.<kind>`` is stored as ``voxbus.<r>.<p>.<session>.<stage>.<kind>``,
``p = fnv1a32(session) % partitions``): stage replicas lease partitions, so a session is always
handled by one replica at a time and sessions spread over all replicas.
"""

from __future__ import annotations

from typing import Final

import msgspec

from voxbus.contracts.subjects import OPS, PREFIX, Kind, check_region

DEFAULT_PARTITIONS: Final = 16
HOUR: Final = 3600.0


class StreamSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    subjects: list[str]
    max_age_s: float
    description: str = ""
    #: Source/destination of the server-side partition transform, if any.
    transform: tuple[str, str] | None = None
    max_msg_size: int = -1
    duplicate_window_s: float = 0.0  # 0: DUPLICATE_WINDOW_S
    #: Caps on what the stream stores (-1: none); the oldest messages go first.
    max_msgs: int = -1
    max_msgs_per_subject: int = -1


class BucketSpec(msgspec.Struct, frozen=True, kw_only=True):
    bucket: str
    ttl_s: float
    description: str = ""
    holds_sessions: bool = True
    #: Kept in the servers' memory only (never written to their disks).
    memory: bool = False
    #: A key, once written, cannot be written again (the server refuses it) until erased.
    write_once: bool = False


#: A stage output's id (``messages.message_id``) is remembered this long: a replica redoing a
#: turn after a takeover (seconds later) publishes nothing twice. The server keeps each id of
#: this window in memory (about 50 audio frames a second per speaking session).
DUPLICATE_WINDOW_S = 60.0

#: How long a partition lease outlives its last renewal: a killed replica's partitions wait this
#: long for a survivor (the larger part of the gap its callers hear).
LEASE_TTL_S = 2.0


class Retention(msgspec.Struct, frozen=True, kw_only=True):
    """Maximum ages. Audio is the most sensitive and the least useful later: it goes first."""

    audio_s: float = 1 * HOUR
    text_s: float = 24 * HOUR
    control_s: float = 24 * HOUR
    state_s: float = 24 * HOUR
    #: Purge requests and completions (opaque session ids only): long enough for a purge
    #: service that was down overnight to find the request, and for the requester to read
    #: the completion.
    ops_s: float = 24 * HOUR
    errors_s: float = 24 * HOUR
    #: Error events stored per region, and per session: a flood of bad input (each message
    #: rejected with an event) cannot grow storage past these, whatever the rate limits let by.
    errors_max: int = 10_000
    errors_per_session: int = 20
    #: Not personal data: how long a partition lease outlives its last renewal.
    leases_s: float = LEASE_TTL_S


#: Servers of a region carry this tag (``server_tags``); every stream and bucket of the region
#: is placed on servers with it, so a session's data stays on its region's cluster.
REGION_TAG_PREFIX: Final = "region:"


def region_tag(region: str) -> str:
    return f"{REGION_TAG_PREFIX}{check_region(region)}"


def _token(region: str) -> str:
    return check_region(region).upper().replace("-", "_")


def _kinds(region: str, *kinds: Kind) -> list[str]:
    return [f"{PREFIX}.{region}.*.{k.value}" for k in kinds]


def partition_transform(region: str, partitions: int) -> tuple[str, str]:
    return (
        f"{PREFIX}.{region}.*.*.*",
        f"{PREFIX}.{region}.{{{{partition({partitions},1)}}}}"
        ".{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}",
    )


def audio_stream(region: str) -> str:
    return f"VOXBUS_{_token(region)}_AUDIO"


def text_stream(region: str) -> str:
    return f"VOXBUS_{_token(region)}_TEXT"


def control_stream(region: str) -> str:
    return f"VOXBUS_{_token(region)}_CTL"


def errors_stream(region: str) -> str:
    return f"VOXBUS_{_token(region)}_ERRORS"


def ops_stream(region: str) -> str:
    """Purge requests and completions of one region (``voxbus.ops.<region>.*``)."""
    return f"VOXBUS_{_token(region)}_OPS"


#: The one ops stream of every region before ops streams were per region: ``provision``
#: removes it (its subjects overlap the new streams'; it held only purge records).
LEGACY_OPS_STREAM: Final = "VOXBUS_OPS"


def state_bucket(region: str) -> str:
    """Per-session state (conversation history, session info); keys start with ``<session>.``."""
    return f"voxbus_{_token(region).lower()}_state"


def keys_bucket(region: str) -> str:
    """The sessions' keys (``contracts.sealing``): ``<session>.key``, in memory only."""
    return f"voxbus_{_token(region).lower()}_keys"


def agents_bucket(region: str) -> str:
    """Agent definitions published to the region (``contracts.agents``): no session data."""
    return f"voxbus_{_token(region).lower()}_agents"


def lease_bucket(region: str) -> str:
    """Partition leases and replica membership of the stage workers (no session data)."""
    return f"voxbus_{_token(region).lower()}_leases"


def stream_of(region: str, kind: Kind) -> str:
    if kind in (Kind.AUDIO_IN, Kind.AUDIO_OUT):
        return audio_stream(region)
    if kind in (Kind.TRANSCRIPT, Kind.REPLY):
        return text_stream(region)
    if kind == Kind.ERROR:
        return errors_stream(region)
    return control_stream(region)


#: The kinds the control stream stores (error events have their own, capped stream).
CONTROL_KINDS: Final = (Kind.SESSION, Kind.SPEECH, Kind.TURN, Kind.INTERRUPT, Kind.SPOKEN,
                        Kind.TOOL_CALL)


def region_streams(
    region: str, *, partitions: int = DEFAULT_PARTITIONS, retention: Retention | None = None
) -> list[StreamSpec]:
    r = retention or Retention()
    transform = partition_transform(region, partitions)
    return [
        StreamSpec(
            name=audio_stream(region),
            subjects=_kinds(region, Kind.AUDIO_IN, Kind.AUDIO_OUT),
            max_age_s=r.audio_s,
            description="participant audio in, synthesized audio out",
            transform=transform,
        ),
        StreamSpec(
            name=text_stream(region),
            subjects=_kinds(region, Kind.TRANSCRIPT, Kind.REPLY),
            max_age_s=r.text_s,
            description="user transcripts and agent replies",
            transform=transform,
        ),
        StreamSpec(
            name=control_stream(region),
            subjects=_kinds(region, *CONTROL_KINDS),
            max_age_s=r.control_s,
            description="session, speech, turn, interrupt, spoken events and tool calls",
            transform=transform,
        ),
        StreamSpec(
            name=errors_stream(region),
            subjects=_kinds(region, Kind.ERROR),
            max_age_s=r.errors_s,
            description="error events (capped: the oldest go first)",
            transform=transform,
            max_msgs=r.errors_max,
            max_msgs_per_subject=r.errors_per_session,
        ),
    ]


def region_buckets(region: str, *, retention: Retention | None = None) -> list[BucketSpec]:
    r = retention or Retention()
    return [
        BucketSpec(bucket=state_bucket(region), ttl_s=r.state_s, description="session state"),
        # a key outlives everything it sealed (the longest retention), and lives in memory
        # only: no disk, raft log or backup of a server ever holds one
        BucketSpec(bucket=keys_bucket(region), ttl_s=max(r.audio_s, r.text_s, r.control_s,
                                                         r.state_s),
                   description="session keys (memory only, write once)", memory=True,
                   write_once=True),
        BucketSpec(
            bucket=lease_bucket(region),
            ttl_s=r.leases_s,
            description="stage partition leases",
            holds_sessions=False,
        ),
        BucketSpec(bucket=agents_bucket(region), ttl_s=0.0, description="agent definitions",
                   holds_sessions=False),
    ]


def ops_streams(regions: list[str], *, retention: Retention | None = None) -> list[StreamSpec]:
    r = retention or Retention()
    return [
        StreamSpec(
            name=ops_stream(x),
            subjects=[f"{PREFIX}.{OPS}.{check_region(x)}.*"],
            max_age_s=r.ops_s,
            description="purge requests and completions (opaque session ids only, no content)",
        )
        for x in regions
    ]
