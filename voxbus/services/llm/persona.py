"""Who answers a reply: the session's agent as the LLM stage uses it (system message, tools
offered, voice, sampling), or, for a session without an agent, the worker's own system prompt and
built-in tools."""

from __future__ import annotations

from dataclasses import dataclass, field

from voxbus.contracts.agents import (
    END_CALL,
    TRANSFER_CALL,
    AgentDefinition,
    SessionAgent,
    ToolDecl,
    transfer_tool,
)
from voxbus.services.llm.engine import ChatMessage, Sampling, ToolSpec
from voxbus.services.llm.tools import END_CALL as END_CALL_SPEC

#: Added to every agent's instructions: what a voice call needs, whoever wrote the agent.
VOICE_RULES = (
    "You are speaking with a caller on a voice call. Answer in one or two short spoken "
    "sentences. Never use lists, markdown, emoji or symbols. Use your tools to act for the "
    "caller; never claim you did something a tool did not confirm. When the caller says "
    "goodbye, say goodbye and call end_call."
)


@dataclass(frozen=True, kw_only=True)
class Persona:
    agent: str  # "" : the worker's default (no agent)
    system: ChatMessage
    tools: list[ToolSpec] | None
    voice: str = ""
    decls: dict[str, ToolDecl] = field(default_factory=dict)
    handoffs: tuple[str, ...] = ()
    #: Where ``transfer_call`` may send a phone call: name -> ``tel:``/``sip:`` address.
    transfers: dict[str, str] = field(default_factory=dict)
    temperature: float | None = None
    max_tokens: int | None = None

    @property
    def sampling(self) -> Sampling | None:
        if self.temperature is None and self.max_tokens is None:
            return None
        return Sampling(temperature=self.temperature, max_tokens=self.max_tokens)


def _transfer_spec(target: AgentDefinition | None, name: str) -> ToolSpec:
    what = ""
    if target is not None:
        what = target.description or target.instructions.split(".")[0][:160]
    return {"type": "function", "function": {
        "name": transfer_tool(name),
        "description": f"Hand the caller over to the {name} agent" + (
            f": {what.rstrip('.')}." if what else "."),
        "parameters": {"type": "object", "properties": {}, "required": []},
    }}


def _transfer_call_spec(names: list[str]) -> ToolSpec:
    return {"type": "function", "function": {
        "name": TRANSFER_CALL,
        "description": "Transfer the phone call to a person. Tell the caller first, in a few "
                       "words; the line goes to them after you finish speaking.",
        "parameters": {"type": "object", "properties": {
            "to": {"type": "string", "enum": names, "description": "Who takes the call."}},
            "required": ["to"]},
    }}


def agent_persona(session: SessionAgent) -> Persona:
    agent = session.agent
    tools: list[ToolSpec] = [t.spec() for t in agent.tools]  # type: ignore[misc]
    tools += [_transfer_spec(session.agents.get(h), h) for h in agent.handoffs]
    if agent.transfers:
        tools.append(_transfer_call_spec(sorted(agent.transfers)))
    tools.append(END_CALL_SPEC)
    system: ChatMessage = {"role": "system",
                           "content": f"{agent.instructions}\n\n{VOICE_RULES}"}
    return Persona(agent=agent.name, system=system, tools=tools, voice=agent.voice,
                   decls={t.name: t for t in agent.tools}, handoffs=tuple(agent.handoffs),
                   transfers=dict(agent.transfers), temperature=agent.temperature,
                   max_tokens=agent.max_tokens)


def default_persona(system: ChatMessage, tools: list[ToolSpec] | None) -> Persona:
    return Persona(agent="", system=system, tools=tools)


def is_builtin(name: str, persona: Persona) -> bool:
    return (name == END_CALL or (name == TRANSFER_CALL and bool(persona.transfers))
            or name in {transfer_tool(h) for h in persona.handoffs})
