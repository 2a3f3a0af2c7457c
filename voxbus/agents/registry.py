"""Agents in a region: the definitions published to ``voxbus_<r>_agents`` and each session's own
copy at ``<session>.agent`` (see ``contracts.agents``)."""

from __future__ import annotations

from collections.abc import Iterable

from nats.js.errors import KeyNotFoundError

from voxbus.contracts.agents import (
    AgentDefinition,
    SessionAgent,
    agent_key,
    decode_definition,
    decode_session_agent,
    encode,
)
from voxbus.runtime.ports import KeyValueStore


class UnknownAgent(LookupError):
    """No agent of that name is published in the region."""


class AgentRegistry:
    """The agent definitions of one region."""

    def __init__(self, kv: KeyValueStore) -> None:
        self._kv = kv

    async def get(self, name: str) -> AgentDefinition | None:
        try:
            entry = await self._kv.get(name)
        except KeyNotFoundError:
            return None
        return decode_definition(entry.value) if entry.value else None

    async def names(self) -> list[str]:
        try:
            return sorted(await self._kv.keys())  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - nats-py raises NoKeysError for an empty bucket
            return []

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
                raise UnknownAgent(n if n == name else f"{n} (a handoff of {name})")
            agents[n] = d
            todo.extend(d.handoffs)
        return SessionAgent(current=name, agents=agents)


class SessionAgents:
    """``<session>.agent`` in the state bucket."""

    def __init__(self, kv: KeyValueStore) -> None:
        self._kv = kv

    async def load(self, session: str) -> SessionAgent | None:
        try:
            entry = await self._kv.get(agent_key(session))
        except KeyNotFoundError:
            return None
        return decode_session_agent(entry.value) if entry.value else None

    async def save(self, session: str, agent: SessionAgent) -> None:
        await self._kv.put(agent_key(session), encode(agent))
