"""Agents on the wire: what a builder publishes to a region (``AgentDefinition``), what a session
keeps of it (``SessionAgent``) and what a tool call leaves behind (``ToolOutcome``).

All three are JSON in KV buckets, so an operator's shell or another language reads them:
- ``voxbus_<r>_agents`` holds one definition per agent name (``streams.agents_bucket``);
  publishing again replaces it and changes its ``version`` (a hash of its content);
- ``<session>.agent`` in the state bucket is the session's own copy of its agent and of every
  agent it may hand off to, taken when the session starts: a new version reaches new sessions
  only, and a replica that takes the session over reads the same copy;
- ``<session>.tool.<call_id>`` in the state bucket is a call's outcome, written by the tool
  worker before it acks the call: a call whose outcome is kept never runs again.

A purge erases both session keys with the rest of the session (``<session>.>``).
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Final

import msgspec

from voxbus.contracts.subjects import check_session

#: An agent's or a tool's name: what the model calls it (``transfer_to_<agent>``).
NAME_PATTERN: Final = r"^[a-z][a-z0-9_]{0,47}$"
_NAME_RE: Final = re.compile(NAME_PATTERN)
Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]

AGENT_STATE: Final = "agent"
TOOL_STATE: Final = "tool"
#: The tools the LLM stage runs itself: they touch only the session.
END_CALL: Final = "end_call"
TRANSFER_PREFIX: Final = "transfer_to_"
#: Transfers a phone call to one of the agent's ``transfers`` (a SIP REFER).
TRANSFER_CALL: Final = "transfer_call"
#: Where a call may be transferred: a ``tel:`` number or a ``sip:`` address.
DESTINATION_PATTERN: Final = r"^(tel:\+?[0-9]{3,15}|sips?:[^\s]{3,250})$"
_DESTINATION_RE: Final = re.compile(DESTINATION_PATTERN)


def valid_destination(uri: str) -> bool:
    return bool(_DESTINATION_RE.match(uri))


def valid_name(name: str) -> bool:
    return bool(_NAME_RE.match(name))


def transfer_tool(agent: str) -> str:
    return f"{TRANSFER_PREFIX}{agent}"


class ToolDecl(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One tool as the model sees it (name, description, JSON schema of its arguments) and as
    the LLM stage runs it."""

    name: Name
    description: str
    parameters: dict[str, Any]
    #: Free of side effects: may start on a speculative end of turn.
    read_only: bool = False
    #: Spoken when the tool has not answered after ``filler_after_s`` ("" : none).
    filler: str = ""
    filler_after_s: float = 0.5
    #: After this long the model is told the tool failed.
    timeout_s: float = 10.0

    def spec(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}}


class AgentDefinition(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    name: Name
    instructions: str
    voice: str = ""
    greeting: str = ""
    tools: list[ToolDecl] = msgspec.field(default_factory=list)
    #: Agents this one may hand the session to (offered as ``transfer_to_<agent>``).
    handoffs: list[Name] = msgspec.field(default_factory=list)
    temperature: float | None = None
    max_tokens: int | None = None
    #: What it does, for the agents that may hand off to it ("": its instructions' first
    #: sentence).
    description: str = ""
    #: People a phone call may be transferred to (``transfer_call``), by name: their number
    #: (``tel:+15550199``) or SIP address. Only these: the model names one, never a number.
    transfers: dict[Name, str] = msgspec.field(default_factory=dict)
    #: The module that defines its tools (the tool workers to run: ``voxbus tools MODULE``).
    module: str = ""
    version: str = ""

    def with_version(self) -> AgentDefinition:
        body = msgspec.json.encode(msgspec.structs.replace(self, version=""))
        return msgspec.structs.replace(self, version=hashlib.sha256(body).hexdigest()[:12])

    def tool(self, name: str) -> ToolDecl | None:
        return next((t for t in self.tools if t.name == name), None)


class SessionAgent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``<session>.agent``: the agent answering now and the definitions the session may use."""

    current: str
    agents: dict[str, AgentDefinition] = msgspec.field(default_factory=dict)
    #: Handoffs so far, oldest first.
    handoffs: list[str] = msgspec.field(default_factory=list)

    @property
    def agent(self) -> AgentDefinition:
        return self.agents[self.current]


class ToolOutcome(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``<session>.tool.<call_id>``: what one call did. ``result`` is JSON text for the model."""

    call_id: str
    tool: str
    ok: bool
    result: str
    ms: float = 0.0
    replica: str = ""
    at_ns: int = 0


def agent_key(session: str) -> str:
    return f"{check_session(session)}.{AGENT_STATE}"


def tool_key(session: str, call_id: str) -> str:
    return f"{check_session(session)}.{TOOL_STATE}.{call_id}"


def encode(value: msgspec.Struct) -> bytes:
    return msgspec.json.encode(value)


def decode_definition(data: bytes) -> AgentDefinition:
    return msgspec.json.decode(data, type=AgentDefinition)


def decode_session_agent(data: bytes) -> SessionAgent:
    return msgspec.json.decode(data, type=SessionAgent)


def decode_outcome(data: bytes) -> ToolOutcome:
    return msgspec.json.decode(data, type=ToolOutcome)
