"""NATS identities and their exact permissions: one identity per role and per region.

Roles (``ROLES``): the ``stt``, ``llm`` and ``tts`` stage workers, the ``tools`` workers (a
builder's tools, run by ``voxbus tools``), the ``bridge``, the
``purger`` (the purge service), ``analytics`` (read-only text consumers) and the ``operator``
(provisioning, dispatch, purge requests: everything of its region). The identity of role R in
region X is the NATS user ``R-X``; it may:

- publish only the session kinds its role produces, in region X;
- consume only its own durable consumers (``<role>-p<n>`` for the stages, ``purger`` on the
  ops stream, ``analytics-<n>`` on the text stream): create, info, pull and ack them, never
  pause, delete or create another;
- read and write only its own KV keys (``<session>.<owner>`` in the state bucket, for the tools
  role ``<session>.tool.<call>`` only; its stage's lease keys), plus the tombstones
  (``purged/<session>``, written by the purger only); the LLM reads the tool outcomes, the LLM
  and the bridge read the agent definitions (the agents bucket, written by the operator only);
- subscribe only under its own inbox prefix (``_INBOX_R-X.``, set on its connection), so
  nobody can capture what JetStream delivers to another identity;
- read no stream by direct or message get: a stage sees a session's data only through the
  consumers of its inputs (the purger alone finds a session's messages by direct get, to
  erase them).

Only the purger and the operator may purge a stream or erase a message, only the operator may
publish a purge request, create, update or delete streams and consumers, or read the ops stream.

``voxbus nats --secure`` writes the server's configuration (``server_config``) and one
credentials file per identity (``Identities``); a worker reads its own from
``VOXBUS_CREDENTIALS``.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec

from voxbus.contracts import streams
from voxbus.contracts.agents import AGENT_STATE, TOOL_STATE
from voxbus.contracts.control import (
    CALLER_STATE,
    INTERRUPTED_STATE,
    LLM_STATE,
    STT_STATE,
    call_subject,
    dispatch_subject,
)
from voxbus.contracts.subjects import (
    OPS,
    PREFIX,
    Kind,
    check_region,
    purged_subject,
    tombstone_subject,
)
from voxbus.runtime.settings import IdentityFile, read_identity


@dataclass(frozen=True)
class Role:
    """What one role does on the bus in its region."""

    name: str
    #: Session kinds it takes from JetStream, by its durable consumers ``<name>-p<n>``.
    consumes: tuple[Kind, ...] = ()
    #: Session kinds it publishes.
    publishes: tuple[Kind, ...] = ()
    #: Session kinds it hears live on core NATS (the bridge forwards them to the room).
    hears: tuple[Kind, ...] = ()
    #: ``<session>.<owner>`` state keys it reads and writes.
    state: tuple[str, ...] = ()
    #: State keys it only reads (every stage reads the tombstones and the interrupt watermark).
    reads: tuple[str, ...] = ()
    #: Stage workers hold partition leases under ``<name>.`` in the lease bucket.
    leases: bool = False
    #: Reads the agent definitions published to the region.
    agents: bool = False


_STAGE_READS = (INTERRUPTED_STATE,)

ROLES: Final[dict[str, Role]] = {r.name: r for r in (
    Role("stt", consumes=(Kind.AUDIO_IN, Kind.SESSION),
         publishes=(Kind.TRANSCRIPT, Kind.SPEECH, Kind.TURN, Kind.ERROR),
         state=(STT_STATE,), reads=_STAGE_READS, leases=True),
    Role("llm", consumes=(Kind.TURN, Kind.SESSION, Kind.INTERRUPT, Kind.SPOKEN),
         publishes=(Kind.REPLY, Kind.TOOL_CALL, Kind.ERROR),
         state=(LLM_STATE, INTERRUPTED_STATE, AGENT_STATE),
         reads=(*_STAGE_READS, f"{TOOL_STATE}.*"), leases=True, agents=True),
    Role("tools", consumes=(Kind.TOOL_CALL,), publishes=(Kind.ERROR,),
         state=(f"{TOOL_STATE}.*",), reads=_STAGE_READS, leases=True),
    Role("tts", consumes=(Kind.REPLY, Kind.INTERRUPT), publishes=(Kind.AUDIO_OUT, Kind.ERROR),
         state=(INTERRUPTED_STATE,), leases=True),
    Role("bridge",
         publishes=(Kind.AUDIO_IN, Kind.SESSION, Kind.INTERRUPT, Kind.SPOKEN, Kind.ERROR),
         hears=(Kind.AUDIO_OUT, Kind.SPEECH, Kind.TRANSCRIPT, Kind.REPLY, Kind.TURN),
         state=(CALLER_STATE,), agents=True),
    Role("purger"),
    Role("analytics", hears=(Kind.TRANSCRIPT, Kind.REPLY)),
    Role("operator"),
)}

#: Durable consumers an analytics identity may make and read on its region's text stream.
ANALYTICS_CONSUMERS: Final = tuple(f"analytics-{n}" for n in range(8))
PURGER_CONSUMER: Final = "purger"
API: Final = "$JS.API"


def user_name(role: str, region: str) -> str:
    return f"{role}-{check_region(region)}"


def inbox_prefix(user: str) -> str:
    """The identity's own inbox prefix: replies and deliveries to it come under
    ``_INBOX_<user>.``, which no other identity may subscribe to."""
    return f"_INBOX_{user}"


def stage_consumers(role: Role, region: str, partitions: int) -> list[tuple[str, str]]:
    """(stream, consumer) of each durable consumer a stage worker makes (``runtime.worker``)."""
    stream_names = sorted({streams.stream_of(region, k) for k in role.consumes})
    return [(s, f"{role.name}-p{p}") for s in stream_names for p in range(partitions)]


def _consumer_use(stream: str, consumer: str, *, delete: bool = False) -> list[str]:
    """Create (both API forms), inspect, pull and ack one named consumer."""
    uses = [
        f"{API}.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
        f"{API}.CONSUMER.CREATE.{stream}.{consumer}",
        f"{API}.CONSUMER.CREATE.{stream}.{consumer}.>",
        f"{API}.CONSUMER.INFO.{stream}.{consumer}",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"$JS.ACK.{stream}.{consumer}.>",
    ]
    if delete:
        uses.append(f"{API}.CONSUMER.DELETE.{stream}.{consumer}")
    return uses


def _kv_keys(bucket: str, key_pattern: str, *, write: bool) -> list[str]:
    """Read (direct get by subject, as the KV client does) and, with ``write``, write keys."""
    reads = [f"{API}.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{key_pattern}"]
    return [*reads, f"$KV.{bucket}.{key_pattern}"] if write else reads


def _bucket_info(*buckets: str) -> list[str]:
    return [f"{API}.STREAM.INFO.KV_{b}" for b in buckets]


def _session_subjects(region: str, kinds: Iterable[Kind]) -> list[str]:
    return [f"{PREFIX}.{region}.*.{k.value}" for k in kinds]


def _region_stream_names(region: str) -> list[str]:
    names = [s.name for s in streams.region_streams(region)]
    names += [s.name for s in streams.ops_streams([region])]
    names += [f"KV_{b.bucket}" for b in streams.region_buckets(region)]
    return names


def _operator(region: str) -> tuple[list[str], list[str]]:
    """Everything of its region, nothing of another: its streams and buckets (create, update,
    delete, purge, read, consumers), its session, ops and KV subjects."""
    pub = [
        f"{PREFIX}.{region}.>", f"{PREFIX}.{OPS}.{region}.>",
        f"{API}.INFO", f"{API}.STREAM.NAMES", f"{API}.STREAM.LIST",
        *(f"$KV.{b.bucket}.>" for b in streams.region_buckets(region)),
    ]
    for s in _region_stream_names(region):
        pub += [
            f"{API}.STREAM.*.{s}", f"{API}.STREAM.MSG.*.{s}",
            f"{API}.DIRECT.GET.{s}", f"{API}.DIRECT.GET.{s}.>",
            f"{API}.CONSUMER.*.{s}", f"{API}.CONSUMER.*.{s}.>", f"{API}.CONSUMER.*.*.{s}.*",
            f"$JS.ACK.{s}.>",
        ]
    # the one ops stream of stores from before ops streams were per region: provisioning
    # removes it (``Bus.provision``)
    legacy = streams.LEGACY_OPS_STREAM
    pub += [f"{API}.STREAM.INFO.{legacy}", f"{API}.STREAM.DELETE.{legacy}"]
    sub = [f"{PREFIX}.{region}.>", f"{PREFIX}.{OPS}.{region}.>"]
    return pub, sub


def permissions(role_name: str, region: str, *, partitions: int = streams.DEFAULT_PARTITIONS,
                ) -> dict[str, object]:
    """The NATS permissions of identity ``<role>-<region>``."""
    role = ROLES[role_name]
    check_region(region)
    state, leases = streams.state_bucket(region), streams.lease_bucket(region)
    keys = streams.keys_bucket(region)
    pub: list[str] = [f"{API}.INFO"]
    sub: list[str] = [f"{inbox_prefix(user_name(role.name, region))}.>"]
    extra: dict[str, object] = {}
    if role.name == "operator":
        more_pub, more_sub = _operator(region)
        pub += more_pub
        sub += more_sub
    pub += _session_subjects(region, role.publishes)
    sub += _session_subjects(region, role.hears)
    for stream, consumer in stage_consumers(role, region, partitions):
        pub += _consumer_use(stream, consumer)
    if role.state or role.reads or role.leases:
        pub += _bucket_info(state)
        pub += _kv_keys(state, "*", write=False)  # tombstones: the only one-token keys
        for owner in role.state:
            pub += _kv_keys(state, f"*.{owner}", write=True)
        for owner in role.reads:
            pub += _kv_keys(state, f"*.{owner}", write=False)
    if role.state or role.name == "bridge":  # whoever holds a session seals with its key
        pub += _bucket_info(keys)
        pub += _kv_keys(keys, "*.key", write=True)
    if role.name == "analytics":  # opens what it reads, while the session lives
        pub += _bucket_info(keys)
        pub += _kv_keys(keys, "*.key", write=False)
    if role.agents:
        agents = streams.agents_bucket(region)
        pub += _bucket_info(agents)
        pub += _kv_keys(agents, "*", write=False)
    if role.leases:
        pub += _bucket_info(leases)
        pub += _kv_keys(leases, f"{role.name}.>", write=True)
    if role.consumes:
        sub.append(tombstone_subject(region))
    if role.name == "bridge":
        sub += [tombstone_subject(region), dispatch_subject(region), call_subject(region)]
        extra["allow_responses"] = True  # answers dispatch requests on the requester's inbox
    if role.name == "purger":
        ops = streams.ops_stream(region)
        pub += _consumer_use(ops, PURGER_CONSUMER)
        pub += [purged_subject(region), tombstone_subject(region)]
        pub += _bucket_info(state)
        pub += _kv_keys(state, "*", write=True)  # writes the tombstones
        # erases: finds each message of the session (a direct get by subject in the payload)
        # and deletes it with erase on every replica, then purges what came in meanwhile
        erased = [s.name for s in streams.region_streams(region)]
        erased += [f"KV_{b.bucket}" for b in streams.region_buckets(region) if b.holds_sessions]
        for name in erased:
            pub += [f"{API}.STREAM.PURGE.{name}", f"{API}.DIRECT.GET.{name}",
                    f"{API}.STREAM.MSG.DELETE.{name}"]
    if role.name == "analytics":
        text = streams.text_stream(region)
        pub.append(f"{API}.STREAM.INFO.{text}")
        for consumer in ANALYTICS_CONSUMERS:
            pub += _consumer_use(text, consumer, delete=True)
        sub.append(tombstone_subject(region))  # readers act on purges
    if role.name == "operator":
        pub += [dispatch_subject(region), call_subject(region)]
    return {"publish": {"allow": sorted(set(pub))}, "subscribe": {"allow": sorted(set(sub))},
            **extra}


# ---- credentials ---------------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@dataclass
class Identities:
    """Every identity of some regions, each in ``<dir>/<role>-<region>.json``."""

    directory: Path
    regions: list[str]
    by_user: dict[str, IdentityFile] = field(default_factory=dict)

    @classmethod
    def load_or_create(cls, directory: Path, regions: list[str]) -> Identities:
        """Read the identities kept in ``directory`` and make the missing ones (the same
        passwords across restarts: running workers stay logged in)."""
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        ids = cls(directory, list(regions))
        for region in regions:
            for role in ROLES:
                user = user_name(role, region)
                path = ids.path(user)
                if not path.exists():
                    ident = IdentityFile(user=user, password=secrets.token_urlsafe(24), role=role,
                                         region=region, inbox_prefix=inbox_prefix(user))
                    _write_private(path, msgspec.json.encode(ident))
                ids.by_user[user] = read_identity(path)
        return ids

    def path(self, user: str) -> Path:
        return self.directory / f"{user}.json"

    def get(self, role: str, region: str) -> IdentityFile:
        return self.by_user[user_name(role, region)]


def server_config(ids: Identities, *, partitions: int = streams.DEFAULT_PARTITIONS) -> str:
    """A nats-server config fragment, ``authorization: {...}`` (a JSON map is valid NATS config
    syntax), to include after other settings."""
    users = [
        {"user": i.user, "password": i.password,
         "permissions": permissions(i.role, i.region, partitions=partitions)}
        for i in ids.by_user.values()
    ]
    return "authorization: " + json.dumps({"users": users}, indent=2)
