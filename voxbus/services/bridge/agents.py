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

from collections.abc import Sequence
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from voxbus.agents.registry import AgentRegistry, UnknownAgent, published
from voxbus.contracts.streams import agents_bucket
from voxbus.services.bridge.routing import metadata_value

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
    return metadata_value(metadata, METADATA_KEY)


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
    """The agents published in ``region``, sorted (``agents.registry.published``)."""
    return await published(js, region)


async def check_published(js: JetStreamContext, region: str, name: str) -> None:
    """Raises ``AgentRefused`` (one line) unless ``name`` and every agent it may hand off to,
    transitively, are published in ``region`` (what the LLM stage will copy into the session)."""
    try:
        registry = AgentRegistry(await js.key_value(agents_bucket(region)))
        await registry.session_copy(name)
    except (NotFoundError, UnknownAgent) as exc:
        missing = exc if isinstance(exc, UnknownAgent) else UnknownAgent(name)
        listed = ", ".join(await published(js, region)) or "none"
        raise AgentRefused(f"{missing} in region {region!r} (published: {listed})") from None
