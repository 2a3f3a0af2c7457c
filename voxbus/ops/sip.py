"""``voxbus sip CONFIG``: phone numbers into agents. For each number of a small TOML file, an
inbound trunk on LiveKit's SIP service and a dispatch rule that gives every call a room of its
own, with the agent and the region that answer it (as a LiveKit agent dispatch for the room and
its metadata, which the bridge reads when it joins: ``services.bridge.agents``,
``services.bridge.routing``; livekit-sip makes the room, and the room's own metadata is not
kept there).

    [[number]]
    number = "+15550100"          # the number callers dial (E.164)
    agent = "frontdesk"           # published in the region ("" or absent: the LLM's default)
    region = "eu"                 # where the call's sessions live ("" : the bridge's default)
    allowed_addresses = ["10.0.0.0/8"]   # optional: the SIP peers that may call it

Running it again is safe: a number whose trunk and rule are as the file says is left alone; one
that changed is replaced; trunks and rules of numbers no longer in the file are removed (only
those this command made: their names start with ``voxbus:``). The LiveKit server and its keys
come from ``BRIDGE_LIVEKIT_URL``, ``BRIDGE_API_KEY`` and ``BRIDGE_API_SECRET``, as the bridge's.
The numbers are personal data only for callers; these are the service's own numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from livekit import api

from voxbus.contracts.agents import valid_name
from voxbus.errors import UserError
from voxbus.services.bridge.agents import METADATA_KEY as AGENT_KEY
from voxbus.services.bridge.routing import METADATA_KEY as REGION_KEY
from voxbus.services.bridge.settings import BridgeSettings

#: Names of the trunks and rules this command owns.
PREFIX: Final = "voxbus:"
#: Every call's room: ``call-<caller>_<random>`` (LiveKit's individual dispatch).
ROOM_PREFIX: Final = "call-"
_E164: Final = re.compile(r"^\+[1-9][0-9]{3,14}$")


class SipConfigError(UserError):
    """The numbers file is wrong (one line: the file, the entry, what to change)."""


@dataclass(frozen=True)
class PhoneNumber:
    number: str
    agent: str = ""
    region: str = ""
    allowed_addresses: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.number}"

    @property
    def metadata(self) -> str:
        """The room metadata the bridge reads (the agent, the region)."""
        meta = {k: v for k, v in ((AGENT_KEY, self.agent), (REGION_KEY, self.region)) if v}
        return json.dumps(meta, sort_keys=True) if meta else ""


@dataclass(frozen=True)
class SipConfig:
    numbers: list[PhoneNumber] = field(default_factory=list)


def load_config(path: Path) -> SipConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as e:
        raise SipConfigError(f"{path}: cannot read it ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise SipConfigError(f"{path}: not TOML ({e})") from None
    entries = raw.get("number", [])
    if not isinstance(entries, list) or not entries:
        raise SipConfigError(f"{path}: no [[number]] entries")
    numbers: list[PhoneNumber] = []
    for i, entry in enumerate(entries):
        where = f"{path}: number[{i}]"
        if not isinstance(entry, dict):
            raise SipConfigError(f"{where}: expected a table")
        unknown = set(entry) - {"number", "agent", "region", "allowed_addresses"}
        if unknown:
            raise SipConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        number, agent = entry.get("number"), entry.get("agent", "")
        region, allowed = entry.get("region", ""), entry.get("allowed_addresses", [])
        if not isinstance(number, str) or not _E164.match(number):
            raise SipConfigError(f"{where}: number {number!r} is not E.164 (like +15550100)")
        if not isinstance(agent, str) or (agent and not valid_name(agent)):
            raise SipConfigError(f"{where}: agent {agent!r} is not an agent name")
        if not isinstance(region, str):
            raise SipConfigError(f"{where}: region must be a string")
        if not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed):
            raise SipConfigError(f"{where}: allowed_addresses must be a list of strings")
        if any(n.number == number for n in numbers):
            raise SipConfigError(f"{where}: {number} is listed twice")
        numbers.append(PhoneNumber(number, agent, region, tuple(allowed)))
    return SipConfig(numbers)


def _trunk_as_wanted(t: Any, n: PhoneNumber) -> bool:
    return list(t.numbers) == [n.number] and list(t.allowed_addresses) == list(
        n.allowed_addresses)


def _rule_as_wanted(r: Any, n: PhoneNumber, trunk_id: str) -> bool:
    agents = [(a.agent_name, a.metadata) for a in r.room_config.agents]
    return (list(r.trunk_ids) == [trunk_id] and r.rule.dispatch_rule_individual.room_prefix
            == ROOM_PREFIX and r.room_config.metadata == n.metadata
            and agents == ([(n.agent, n.metadata)] if n.metadata else []))


async def provision(lk: api.LiveKitAPI, config: SipConfig) -> list[str]:
    """Make LiveKit's trunks and rules what ``config`` says; one line for each change."""
    trunks = {t.name: t for t in (await lk.sip.list_inbound_trunk(
        api.ListSIPInboundTrunkRequest())).items if t.name.startswith(PREFIX)}
    rules = {r.name: r for r in (await lk.sip.list_dispatch_rule(
        api.ListSIPDispatchRuleRequest())).items if r.name.startswith(PREFIX)}
    said: list[str] = []
    wanted = {n.name for n in config.numbers}
    for n in config.numbers:
        answered = f"{n.agent or 'the default agent'} in {n.region or 'the default region'}"
        trunk, rule = trunks.get(n.name), rules.get(n.name)
        if trunk is not None and not _trunk_as_wanted(trunk, n):
            await lk.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=trunk.sip_trunk_id))
            trunk = None
        if trunk is None:
            trunk = await lk.sip.create_inbound_trunk(api.CreateSIPInboundTrunkRequest(
                trunk=api.SIPInboundTrunkInfo(name=n.name, numbers=[n.number],
                                              allowed_addresses=list(n.allowed_addresses))))
        if rule is not None and not _rule_as_wanted(rule, n, trunk.sip_trunk_id):
            await lk.sip.delete_dispatch_rule(api.DeleteSIPDispatchRuleRequest(
                sip_dispatch_rule_id=rule.sip_dispatch_rule_id))
            rule = None
        if rule is None:
            await lk.sip.create_dispatch_rule(api.CreateSIPDispatchRuleRequest(
                name=n.name, trunk_ids=[trunk.sip_trunk_id],
                rule=api.SIPDispatchRule(dispatch_rule_individual=api.SIPDispatchRuleIndividual(
                    room_prefix=ROOM_PREFIX)),
                room_config=api.RoomConfiguration(metadata=n.metadata, agents=[
                    api.RoomAgentDispatch(agent_name=n.agent, metadata=n.metadata)]
                    if n.metadata else [])))
            said.append(f"{n.number}: answered by {answered}")
        else:
            said.append(f"{n.number}: unchanged ({answered})")
    for name, rule in rules.items():
        if name not in wanted:
            await lk.sip.delete_dispatch_rule(api.DeleteSIPDispatchRuleRequest(
                sip_dispatch_rule_id=rule.sip_dispatch_rule_id))
    for name, trunk in trunks.items():
        if name not in wanted:
            await lk.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=trunk.sip_trunk_id))
            said.append(f"{name.removeprefix(PREFIX)}: removed")
    return said


async def _run(config: SipConfig, settings: BridgeSettings) -> list[str]:
    lk = api.LiveKitAPI(settings.api_url, settings.api_key, settings.api_secret)
    try:
        return await provision(lk, config)
    except api.TwirpError as e:
        raise UserError(f"LiveKit at {settings.api_url} refused: {e.message}") from None
    except OSError as e:
        raise UserError(f"cannot reach LiveKit at {settings.api_url}: {e}") from None
    finally:
        await lk.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voxbus sip", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path, help="the numbers file (TOML, [[number]] entries)")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    config = load_config(args.config)
    settings = BridgeSettings.from_env()
    for line in asyncio.run(_run(config, settings)):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
