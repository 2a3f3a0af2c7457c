"""``voxbus agents publish MODULE`` puts a module's agents in the region (a new version for new
sessions; running sessions keep theirs); ``voxbus agents list`` shows what the region has.
``voxbus tools MODULE`` publishes too, when it runs without identities or as the operator."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from voxbus.agents.loader import load
from voxbus.agents.registry import AgentRegistry, published
from voxbus.contracts.streams import agents_bucket
from voxbus.runtime import logging
from voxbus.runtime.serve import connect
from voxbus.runtime.settings import BusSettings


async def _publish(spec: str, settings: BusSettings) -> list[str]:
    module = load(spec)
    if not module.agents:
        return [f"{spec} defines no Agent: nothing to publish"]
    bus = await connect(settings, name="voxbus-agents")
    try:
        await bus.provision(create_only=True)
        lines = []
        for region in bus.regions:
            registry = AgentRegistry(await bus.kv(agents_bucket(region)))
            definitions = [a.definition(spec) for a in module.agents.values()]
            for name, version, changed in await registry.publish(definitions):
                what = "published" if changed else "unchanged"
                lines.append(f"{region}: {name} {version} {what}")
        return lines
    finally:
        await bus.close()


async def _list(settings: BusSettings) -> list[str]:
    bus = await connect(settings, name="voxbus-agents")
    try:
        lines = []
        for region in bus.regions:
            registry = AgentRegistry(await bus.kv(agents_bucket(region)))
            for name in await published(bus.js, region):
                d = await registry.get(name)
                if d is not None:
                    tools = ", ".join(t.name for t in d.tools) or "no tools"
                    hand = f"; hands off to {', '.join(d.handoffs)}" if d.handoffs else ""
                    lines.append(f"{region}: {name} {d.version} ({tools}{hand}) from "
                                 f"{d.module or '?'}")
        return lines or ["no agents published"]
    finally:
        await bus.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voxbus agents", description=__doc__)
    sub = p.add_subparsers(dest="what", required=True)
    pub = sub.add_parser("publish", help="publish a module's agents to the region")
    pub.add_argument("module", help="a .py file or a dotted module name")
    sub.add_parser("list", help="the agents published in the region")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.configure(os.environ.get("VOXBUS_LOG_LEVEL", "warning"))  # stdout: the result
    settings = BusSettings.from_env()
    if args.what == "publish":
        settings.require_role("operator")
        lines = asyncio.run(_publish(args.module, settings))
    else:
        lines = asyncio.run(_list(settings))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
