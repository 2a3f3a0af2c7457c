"""``Agent``: who answers a call, in words a builder writes.

    from voxbus.agents import Agent, tool

    @tool
    async def opening_hours(day: str) -> dict:
        '''When the restaurant is open on a day.

        Args:
            day: A weekday, like "Friday".
        '''
        ...

    frontdesk = Agent(name="frontdesk", instructions="You take bookings...",
                      tools=[opening_hours], handoffs=["events"], greeting="Hello!")

``voxbus agents publish MODULE`` (or ``voxbus tools MODULE``, which also runs the tools)
publishes the module's agents to the region; sessions pick one by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from voxbus.agents.schema import SchemaError
from voxbus.agents.tool import Tool
from voxbus.contracts.agents import (
    END_CALL,
    TRANSFER_CALL,
    TRANSFER_PREFIX,
    AgentDefinition,
    valid_destination,
    valid_name,
)


@dataclass(frozen=True)
class Agent:
    name: str
    instructions: str
    #: The TTS voice it speaks with ("": the TTS's default).
    voice: str = ""
    #: Said when the caller joins ("": the agent waits for the caller).
    greeting: str = ""
    tools: Sequence[Tool] = ()
    #: Agents it may hand the session to, by name (or the ``Agent`` itself).
    handoffs: Sequence[str | Agent] = ()
    temperature: float | None = None
    max_tokens: int | None = None
    #: What it does, in a few words: how other agents' ``transfer_to_<name>`` describe it
    #: (default: the first sentence of its instructions).
    description: str = ""
    #: Where it may transfer a phone call (``transfer_call``), by name:
    #: ``{"front_desk": "tel:+15550199"}``; the model picks a name, never dials a number.
    transfers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not valid_name(self.name):
            raise SchemaError(f"agent name {self.name!r}: lowercase letters, digits and '_', "
                              "starting with a letter")
        if not self.instructions.strip():
            raise SchemaError(f"agent {self.name!r} needs instructions")
        names = [t.name for t in self.tools]
        for t in self.tools:
            if not isinstance(t, Tool):
                raise SchemaError(f"agent {self.name!r}: {t!r} is not a @tool")
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise SchemaError(f"agent {self.name!r} lists tool {sorted(dup)[0]!r} twice")
        clash = [n for n in names
                 if n in (END_CALL, TRANSFER_CALL) or n.startswith(TRANSFER_PREFIX)]
        if clash:
            raise SchemaError(f"agent {self.name!r}: tool name {clash[0]!r} is reserved "
                              "(end_call, transfer_call and transfer_to_<agent> are built in)")
        for who, uri in self.transfers.items():
            if not valid_name(who):
                raise SchemaError(f"agent {self.name!r}: transfer name {who!r}: lowercase "
                                  "letters, digits and '_', starting with a letter")
            if not valid_destination(uri):
                raise SchemaError(f"agent {self.name!r}: transfer {who!r} to {uri!r}: expected "
                                  "tel:+<number> or sip:<address>")
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise SchemaError(f"agent {self.name!r}: temperature must be within 0..2")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise SchemaError(f"agent {self.name!r}: max_tokens must be at least 1")

    @property
    def handoff_names(self) -> list[str]:
        return [h.name if isinstance(h, Agent) else h for h in self.handoffs]

    def definition(self, module: str = "") -> AgentDefinition:
        """What is published to the region (versioned by its content)."""
        return AgentDefinition(
            name=self.name, instructions=self.instructions.strip(), voice=self.voice,
            greeting=self.greeting, tools=[t.decl for t in self.tools],
            handoffs=self.handoff_names, temperature=self.temperature,
            max_tokens=self.max_tokens, module=module, description=self.description.strip(),
            transfers=dict(self.transfers),
        ).with_version()
