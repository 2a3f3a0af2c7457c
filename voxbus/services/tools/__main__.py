"""``voxbus tools MODULE``: run MODULE's ``@tool`` functions as a worker of the tools stage
(``VOXBUS_*`` bus settings; any number of replicas), and publish MODULE's agents to the region
first when this identity may (no identity, or the operator's)."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import Sequence

import structlog

from voxbus.agents.loader import AgentModule, load
from voxbus.agents.registry import AgentRegistry
from voxbus.contracts.streams import agents_bucket
from voxbus.runtime import logging
from voxbus.runtime.bus import Bus
from voxbus.runtime.serve import serve
from voxbus.runtime.settings import BusSettings
from voxbus.services.tools.stage import ToolsStage

log = structlog.get_logger("voxbus.tools")


async def publish_agents(bus: Bus, module: AgentModule) -> None:
    """Put the module's agent definitions in each region of ``bus``."""
    definitions = [a.definition(module.source) for a in module.agents.values()]
    for region in bus.regions:
        registry = AgentRegistry(await bus.kv(agents_bucket(region)))
        for name, version, changed in await registry.publish(definitions):
            log.info("agent_published" if changed else "agent_unchanged", agent=name,
                     version=version, region=region)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voxbus tools", description=__doc__)
    p.add_argument("module", help="a .py file or a dotted module name")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.configure()
    module = load(args.module)  # a module that fails to import: one line, before connecting
    settings = BusSettings.from_env()
    replica = f"{socket.gethostname()}-{os.getpid()}"
    stage = ToolsStage(module.tools, replica=replica)
    log.info("tools_loaded", module=args.module, tools=sorted(module.tools),
             agents=sorted(module.agents))
    asyncio.run(serve(stage, settings, before=lambda bus: _publish_if_allowed(bus, module)))
    return 0


async def _publish_if_allowed(bus: Bus, module: AgentModule) -> None:
    if module.agents and bus.may_provision:
        await bus.provision(create_only=True)
        await publish_agents(bus, module)


if __name__ == "__main__":
    sys.exit(main())
