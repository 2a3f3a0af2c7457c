"""The session's agent as an LLM worker holds it: chosen when the session starts (its own copy,
``<session>.agent``), read from there by a replica that takes the session over, changed by a
handoff. A session nobody chose an agent for gets the worker's default (``LLM_AGENT``), else the
worker's own system prompt and tools."""

from __future__ import annotations

from typing import Protocol

from voxbus.agents.registry import AgentRegistry, SessionAgents, UnknownAgent
from voxbus.contracts.agents import SessionAgent
from voxbus.runtime.stage import Context
from voxbus.services.llm.persona import Persona


class AgentWorker(Protocol):
    def persona(self, agent: SessionAgent | None) -> Persona: ...

    async def registry(self, ctx: Context) -> AgentRegistry: ...

    async def session_agents(self, ctx: Context) -> SessionAgents: ...


class AgentSlot:
    def __init__(self, worker: AgentWorker, session: str, default: str = "") -> None:
        self.worker = worker
        self.session = session
        self.default = default
        self.agent: SessionAgent | None = None
        self._loaded = False

    async def choose(self, name: str, ctx: Context) -> None:
        """The session talks to ``name`` (its copy is taken now). Raises ``UnknownAgent``."""
        self.agent = await (await self.worker.registry(ctx)).session_copy(name)
        self._loaded = True
        await (await self.worker.session_agents(ctx)).save(self.session, self.agent)
        ctx.log.info("llm_agent_chosen", agent=name,
                     version=self.agent.agent.version)

    async def persona(self, ctx: Context) -> Persona:
        if not self._loaded:
            self.agent = await (await self.worker.session_agents(ctx)).load(self.session)
            self._loaded = self.agent is not None or not self.default
            if self.agent is None and self.default:
                try:
                    await self.choose(self.default, ctx)
                except UnknownAgent:  # not published yet: asked again at the next turn
                    ctx.log.warning("llm_default_agent_unknown", agent=self.default)
        return self.worker.persona(self.agent)

    async def handoff(self, target: str, ctx: Context) -> None:
        """``target`` answers from the next reply on (this replica's and any other's)."""
        if self.agent is None or target not in self.agent.agents:
            raise UnknownAgent(target)
        before = self.agent.current
        self.agent.current = target
        self.agent.handoffs.append(target)
        await (await self.worker.session_agents(ctx)).save(self.session, self.agent)
        ctx.log.info("llm_handoff", agent=before, to=target)
