"""Agents in a region: the definitions published to ``voxbus_<r>_agents`` and each session's own
copy at ``<session>.agent`` (see ``contracts.agents``)."""

from __future__ import annotations

from collections.abc import Iterable

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from voxbus.contracts.agents import (
    AgentDefinition,
    SessionAgent,
    agent_key,
    decode_definition,
    decode_session_agent,
    encode,
    valid_name,
)
from voxbus.contracts.streams import agents_bucket
from voxbus.runtime.ports import KeyValueStore


class UnknownAgent(LookupError):
    """No agent of that name is published in the region (``handoff_of``: the agent that may
    hand off to it)."""

    def __init__(self, name: str, handoff_of: str = "") -> None:
        super().__init__(name)
        self.name = name
        self.handoff_of = handoff_of

    def __str__(self) -> str:
        of = f" (a handoff of {self.handoff_of!r})" if self.handoff_of else ""
        return f"no agent {self.name!r}{of}"


class AgentRegistry:
    """The agent definitions of one region."""

    def __init__(self, kv: KeyValueStore) -> None:
        self._kv = kv

    async def get(self, name: str) -> AgentDefinition | None:
        if not valid_name(name):
            return None
        try:
            entry = await self._kv.get(name)
        except NotFoundError:  # never published, or deleted (KeyDeletedError)
            return None
        return decode_definition(entry.value) if entry.value else None

    async def publish(self, definitions: Iterable[AgentDefinition]) -> list[tuple[str, str, bool]]:
        """Put each definition; (name, version, changed) for each. A session started before
        keeps the version it has; new sessions get this one."""
        out: list[tuple[str, str, bool]] = []
        for d in definitions:
            old = await self.get(d.name)
            changed = old is None or old.version != d.version
            if changed:
                await self._kv.put(d.name, encode(d))
            out.append((d.name, d.version, changed))
        return out

    async def session_copy(self, name: str) -> SessionAgent:
        """The agent ``name`` and every agent it may hand off to, transitively: what a session
        keeps. Raises ``UnknownAgent``."""
        agents: dict[str, AgentDefinition] = {}
        todo = [name]
        while todo:
            n = todo.pop()
            if n in agents:
                continue
            d = await self.get(n)
            if d is None:
                raise UnknownAgent(n, "" if n == name else name)
            agents[n] = d
            todo.extend(d.handoffs)
        return SessionAgent(current=name, agents=agents)


async def published(js: JetStreamContext, region: str) -> list[str]:
    """The agents published in ``region``, sorted. Read from the bucket stream's subjects
    (``STREAM.INFO`` with a subject filter), which every identity that reads agents may do,
    rather than with a key watcher (a consumer on the bucket, which they may not make)."""
    bucket = agents_bucket(region)
    prefix = f"$KV.{bucket}."
    try:
        info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
    except NotFoundError:
        return []
    names = sorted(s[len(prefix):] for s in (info.state.subjects or {}) if s.startswith(prefix))
    registry = AgentRegistry(await js.key_value(bucket))
    return [n for n in names if await registry.get(n) is not None]


class SessionAgents:
    """``<session>.agent`` in the state bucket."""

    def __init__(self, kv: KeyValueStore) -> None:
        self._kv = kv

    async def load(self, session: str) -> SessionAgent | None:
        try:
            entry = await self._kv.get(agent_key(session))
        except NotFoundError:
            return None
        return decode_session_agent(entry.value) if entry.value else None

    async def save(self, session: str, agent: SessionAgent) -> None:
        await self._kv.put(agent_key(session), encode(agent))
