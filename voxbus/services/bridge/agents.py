"""Which agent a room's callers talk to: chosen once, when the agent is dispatched into the room,
and never changed while it is there (every session the bridge starts in the room carries it in
``SessionStarted.agent``).

In order: the dispatch's word (``voxbus dispatch ROOM --agent NAME``, ``DispatchRequest.agent``),
else the room's metadata (a JSON object: ``{"agent": "frontdesk"}``, beside ``voxbus_region``),
else LiveKit's own explicit agent dispatch for the room (the ``agent_name`` of a
``CreateAgentDispatch`` request, or of a token's ``RoomConfiguration.agents``: the bridge is no
LiveKit agent worker, so it reads the room's dispatches rather than receiving their jobs), else
"" (the LLM worker's default agent).

A named agent must be published in the room's region (``voxbus tools MODULE`` or ``voxbus agents
publish``), with every agent it may hand off to, before the bridge joins: otherwise the room is
refused in one line that lists what is published (``AgentRefused``), never answered by another
agent. When the name came from the room itself (its metadata or a LiveKit dispatch) rather than
from whoever asked, an ``ErrorEvent(code="unknown_agent")`` is published too: with auto-join
nobody else hears of it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from voxbus.agents.registry import AgentRegistry
from voxbus.contracts.agents import valid_name
from voxbus.contracts.streams import agents_bucket

#: The room metadata key (the room's metadata is a JSON object) naming its agent.
METADATA_KEY = "agent"


class AgentRefused(ValueError):
    """The room's agent is not published in its region (or the room has another agent)."""


@dataclass(frozen=True)
class AgentChoice:
    #: "" : the LLM worker's default.
    name: str
    #: Why: ``dispatch``, ``metadata``, ``livekit`` or ``default``.
    source: str

    @property
    def from_room(self) -> bool:
        """Named by the room itself, not by whoever asked for the dispatch."""
        return self.source in ("metadata", "livekit")


def metadata_agent(metadata: str) -> str:
    """The agent a room's metadata names, or ``""``."""
    try:
        data = json.loads(metadata) if metadata else None
    except ValueError:
        return ""
    value = data.get(METADATA_KEY) if isinstance(data, dict) else None
    return value.strip() if isinstance(value, str) else ""


def choose_agent(*, requested: str = "", metadata: str = "",
                 livekit: Sequence[str] = ()) -> AgentChoice:
    """``livekit``: the agent names of the room's LiveKit agent dispatches (empty names, the
    server's automatic dispatch, are no choice)."""
    if requested.strip():
        return AgentChoice(requested.strip(), "dispatch")
    if meta := metadata_agent(metadata):
        return AgentChoice(meta, "metadata")
    named = [n.strip() for n in livekit if n.strip()]
    if named:
        return AgentChoice(named[0], "livekit")
    return AgentChoice("", "default")


async def published_agents(js: JetStreamContext, region: str) -> list[str]:
    """The agents published in ``region``, sorted. Read from the bucket stream's subjects
    (``STREAM.INFO`` with a subject filter), which the bridge's identity may do, rather than
    with a key watcher (a consumer on the bucket, which it may not make)."""
    bucket = agents_bucket(region)
    prefix = f"$KV.{bucket}."
    try:
        info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
    except NotFoundError:
        return []
    names = sorted(s[len(prefix):] for s in (info.state.subjects or {}) if s.startswith(prefix))
    registry = AgentRegistry(await js.key_value(bucket))
    return [n for n in names if await _get(registry, n)]


async def _get(registry: AgentRegistry, name: str) -> bool:
    try:
        return await registry.get(name) is not None
    except NotFoundError:  # a deleted key (KeyDeletedError is no KeyNotFoundError)
        return False


async def check_published(js: JetStreamContext, region: str, name: str) -> None:
    """Raises ``AgentRefused`` (one line) unless ``name`` and every agent it may hand off to,
    transitively, are published in ``region``."""
    try:
        registry = AgentRegistry(await js.key_value(agents_bucket(region)))
    except NotFoundError:
        registry = None
    seen: set[str] = set()
    todo = [name]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        try:
            found = (await registry.get(n)
                     if registry is not None and valid_name(n) else None)
        except NotFoundError:
            found = None
        if found is None:
            listed = ", ".join(await published_agents(js, region)) or "none"
            what = f"no agent {n!r}" + (f" (a handoff of {name!r})" if n != name else "")
            raise AgentRefused(f"{what} in region {region!r} (published: {listed})")
        todo.extend(found.handoffs)
