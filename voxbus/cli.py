"""``voxbus``: one command with a subcommand per job. Imports are lazy so each job loads only
what it needs (the bus tools don't load models).

Bad input (``voxbus.errors.UserError``: a setting, a model or credentials file, a port in use, a
missing program) ends any command with one line on stderr, ``voxbus <command>: <message>``, and
exit status 2; ``VOXBUS_DEBUG=1`` shows its traceback instead. Anything else is a bug and keeps
its traceback."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from voxbus.errors import DEBUG_ENV, EXIT_STATUS, UserError, user_error

if TYPE_CHECKING:
    from voxbus.ops.auth import Identities
    from voxbus.ops.supercluster import Supercluster


def _nats(args: argparse.Namespace) -> int:
    import signal

    from voxbus.ops.auth import ROLES, Identities, server_config
    from voxbus.ops.nats import EmbeddedNats, NatsServerError
    from voxbus.ops.supercluster import Supercluster
    from voxbus.runtime import logging

    logging.configure(os.environ.get("VOXBUS_LOG_LEVEL", "warning"))  # stdout: the URLs only
    regions = [r.strip() for r in args.regions.split(",") if r.strip()]
    store = Path(args.store)
    store.mkdir(parents=True, exist_ok=True)
    ids: Identities | None = None
    auth = ""
    if args.secure:  # the same passwords across restarts: running workers stay logged in
        ids = Identities.load_or_create(store / "credentials", regions)
        auth = server_config(ids, partitions=args.partitions)

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # unwinds to the ``finally`` below: the servers stop with us

    signal.signal(signal.SIGTERM, terminate)
    cluster: Supercluster | None = None
    server: EmbeddedNats | None = None
    try:
        if args.cluster_size:
            cluster = Supercluster(regions, args.cluster_size, store, auth_config=auth,
                                   base_port=args.port or None).start()
            urls = {r: cluster.url(r) for r in regions}
        else:
            conf: Path | None = None
            if auth:
                conf = store / "auth.conf"
                conf.write_text(auth)
                conf.chmod(0o600)
            server = EmbeddedNats(port=args.port, store_dir=store, config_file=conf).start()
            urls = dict.fromkeys(regions, server.url)
        asyncio.run(_provision_regions(urls, ids, args.partitions))
    except (KeyboardInterrupt, NatsServerError, ValueError, RuntimeError) as e:
        if cluster is not None:
            cluster.stop()
        if server is not None:
            server.stop()
        if isinstance(e, KeyboardInterrupt):
            return 0
        raise UserError(_server_said(str(e))) from None
    try:
        if cluster is not None:
            for r in regions:
                print(cluster.env_line(r), flush=True)
            print(f"store={store}/<region>-<n>  logs=<store>/<region>-<n>/nats-server.log  "
                  f"partitions={args.partitions}", file=sys.stderr, flush=True)
        else:
            assert server is not None
            print(f"NATS_URL={server.url}  regions={','.join(regions)}  "
                  f"partitions={args.partitions}  store={store}  log={server.log_file}",
                  flush=True)
        if ids:
            print(f"credentials: {ids.directory}/<role>-<region>.json, one per identity "
                  f"(roles {', '.join(ROLES)}); a process reads its own from "
                  "VOXBUS_CREDENTIALS", file=sys.stderr if cluster else sys.stdout, flush=True)
        if server is not None:
            return server.wait()
        assert cluster is not None
        _watch(cluster)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if cluster is not None:
            cluster.stop()
        if server is not None:
            server.stop()


def _server_said(message: str) -> str:
    """``message`` with the log tail of a nats-server that exited cut to its own reason (the
    ``[FTL]`` line: a port in use, a bad config)."""
    for line in message.splitlines():
        if "[FTL]" in line:
            return f"nats-server exited: {line.split('[FTL]', 1)[1].strip()}"
    return message


def _watch(cluster: Supercluster) -> None:
    """Until interrupted: say once when a server of the supercluster exits."""
    import time

    gone: set[str] = set()
    while True:
        for m in cluster.members:
            if not m.server.running and m.name not in gone:
                gone.add(m.name)
                print(f"voxbus nats: server {m.name} exited (see {m.store_dir}/nats-server.log)",
                      file=sys.stderr, flush=True)
        time.sleep(0.5)


async def _provision_regions(urls: dict[str, str], ids: Identities | None,
                             partitions: int) -> None:
    """Each region provisioned on its own servers, by its own operator when secure (an
    operator may touch only its region)."""
    from voxbus.runtime.bus import Bus
    from voxbus.runtime.settings import BusSettings

    retention = BusSettings.from_env().retention()
    groups: dict[tuple[str, str], list[str]] = {}
    for r, url in urls.items():  # a lone server for all regions: one connection, unless secure
        groups.setdefault((url, r if ids else ""), []).append(r)
    for (url, _), regions in groups.items():
        op = ids.get("operator", regions[0]) if ids is not None else None
        bus = await Bus.connect(url, regions=regions, partitions=partitions,
                                user=op.user if op else None,
                                password=op.password if op else None,
                                inbox_prefix=op.inbox_prefix if op else None)
        try:
            await bus.provision(retention)
        finally:
            await bus.close()


def _provision(args: argparse.Namespace) -> int:
    from voxbus.runtime.serve import connect
    from voxbus.runtime.settings import BusSettings

    async def run() -> None:
        settings = BusSettings.from_env()
        settings.require_role("operator")
        bus = await connect(settings, name="voxbus-provision")
        await bus.provision(settings.retention())
        await bus.close()

    asyncio.run(run())
    return 0


def _purge(args: argparse.Namespace) -> int:
    import nats.errors

    from voxbus.ops.purge import PurgeError, purge_session, request_purge
    from voxbus.runtime import logging
    from voxbus.runtime.serve import connect
    from voxbus.runtime.settings import BusSettings, SettingsError

    async def run() -> dict[str, int]:
        bus = await connect(own, name="voxbus-purge")
        if args.region not in bus.regions:
            bus.regions.append(args.region)
        try:
            if args.via_service:
                return (await request_purge(bus, args.region, args.session)).removed
            return await purge_session(bus, args.region, args.session)
        finally:
            await bus.close()

    logging.configure()  # stderr: stdout is what was removed
    settings = BusSettings.from_env()
    settings.require_role("operator", "purger")
    own = settings.for_region(args.region)  # the region's own servers and identity
    if own.identity is not None and args.region != own.identity.region:
        raise SettingsError(f"the identity in VOXBUS_CREDENTIALS ({own.identity.user}) "
                            f"may not purge region {args.region!r}")
    try:
        removed = asyncio.run(run())
    except (TimeoutError, nats.errors.TimeoutError, PurgeError) as e:
        print(f"voxbus purge: the purge of {args.session} did not complete: "
              f"{e or 'no answer in time'}", file=sys.stderr)
        return 1
    for stream, n in removed.items():
        print(f"{stream}: {n} removed")
    return 0


def _purger(args: argparse.Namespace) -> int:
    from voxbus.ops.purge import PurgeService
    from voxbus.runtime import logging
    from voxbus.runtime.serve import connect_regions
    from voxbus.runtime.settings import BusSettings

    logging.configure()

    async def run() -> None:
        settings = BusSettings.from_env()
        settings.require_role("purger")
        buses = await connect_regions(settings, name="voxbus-purger")
        try:  # each region's purges on that region's own servers
            async with asyncio.TaskGroup() as tg:
                for bus in buses:
                    tg.create_task(PurgeService(bus).run())
        finally:
            for bus in buses:
                await bus.close()

    asyncio.run(run())
    return 0


def _module_main(module: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        main = importlib.import_module(module).main
        rc = main(args.rest) if inspect.signature(main).parameters else main()
        return int(rc or 0)

    return run


def _bench(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"voxbus.bench.{args.which}")
    return int(module.main(args.rest) or 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voxbus", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    n = sub.add_parser("nats", help="run an embedded JetStream nats-server (or a supercluster, "
                       "one cluster per region) and provision it")
    n.add_argument("--port", type=int, default=4222,
                   help="the client port (with --cluster-size: the first of the ports used; "
                        "0: free ports)")
    n.add_argument("--cluster-size", type=int, default=0, metavar="N",
                   help="one cluster of N servers per region (tagged region:<r>), joined by "
                        "gateways; prints VOXBUS_REGION=<r> NATS_URL=<that region's servers> "
                        "per region (1 for a laptop, 3 for replicated streams)")
    n.add_argument("--store", default=".voxbus/nats",
                   help="store directory: JetStream data, the server's log, credentials "
                        "(default: .voxbus/nats, kept across restarts)")
    n.add_argument("--regions", default=os.environ.get("VOXBUS_REGIONS", "local"))
    n.add_argument("--partitions", type=int, default=16)
    n.add_argument("--secure", action="store_true",
                   help="require one identity per role and region (stt, llm, tts, tools, bridge, "
                        "purger, analytics, operator), each with exactly its permissions; "
                        "one credentials file each in <store>/credentials, made once")
    n.set_defaults(fn=_nats)

    pv = sub.add_parser("provision", help="create/update streams and buckets on NATS_URL")
    pv.set_defaults(fn=_provision)

    pg = sub.add_parser("purge", help="erase everything of a session in a region")
    pg.add_argument("session")
    pg.add_argument("--region", required=True)
    pg.add_argument("--via-service", action="store_true",
                    help="publish a purge request and wait for the purge service's answer")
    pg.set_defaults(fn=_purge)

    ps = sub.add_parser("purger", help="run the purge service")
    ps.set_defaults(fn=_purger)

    for name, module, text in [
        ("stt", "voxbus.services.stt.__main__", "run an STT stage worker"),
        ("llm", "voxbus.services.llm.__main__", "run an LLM stage worker"),
        ("tts", "voxbus.services.tts.__main__", "run a TTS stage worker"),
        ("bridge", "voxbus.services.bridge.__main__", "run the LiveKit bridge"),
        ("demo", "voxbus.dev.demo", "run the whole voice loop with a scripted caller"),
        ("dispatch", "voxbus.services.bridge.dispatch", "send the agent into a LiveKit room"),
        ("call", "voxbus.ops.call", "the agent calls a phone (sip:user@host) from a new room"),
        ("sip", "voxbus.ops.sip",
         "phone numbers into agents: LiveKit SIP trunks and dispatch rules from a TOML file"),
        ("top", "voxbus.ops.top", "a live view of stages, replicas, partitions, lag, latency"),
        ("web", "voxbus.web.server", "serve the browser page to talk to the agent"),
        ("transcripts", "voxbus.ops.transcripts",
         "print a region's final transcripts (personal data) as the analytics identity"),
        ("deploy", "voxbus.ops.deploy",
         "deployment values: the official NATS chart's values for a region"),
        ("cost", "voxbus.bench.cost",
         "the cost of a call-minute per stage, from the stage benchmarks' results"),
        ("tools", "voxbus.services.tools.__main__",
         "run a module's tools as a worker (and publish its agents to the region)"),
        ("agents", "voxbus.agents.cli", "publish or list the agents of a region"),
        ("eval", "voxbus.evals.cli",
         "run an agent's scripted conversations through the real stages and check them"),
    ]:
        sp = sub.add_parser(name, help=text, add_help=False)
        sp.set_defaults(fn=_module_main(module), passthrough=True)

    b = sub.add_parser("bench", help="run a benchmark; writes bench/results/<name>.json")
    b.add_argument("which", choices=["bus", "stt", "llm", "tts", "voice", "faults", "soak",
                                    "coldstart", "scale", "hearing", "denoise", "backchannel",
                                    "seal", "fuzz"])
    b.set_defaults(fn=_bench, passthrough=True)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    fn: Callable[[argparse.Namespace], int] = args.fn
    try:
        return fn(args)
    except KeyboardInterrupt:  # Ctrl-C (while waiting for a server, say): no traceback
        return 130
    except BaseException as e:  # bad input (``voxbus.errors``): one line, no traceback
        bad = user_error(e)
        if bad is None or os.environ.get(DEBUG_ENV) == "1":
            raise
        print(f"voxbus {args.cmd}: {one_line(str(bad))}", file=sys.stderr, flush=True)
        return EXIT_STATUS


def one_line(message: str) -> str:
    """A message of several lines (a server's output quoted in it) as one."""
    return "; ".join(part.strip() for part in message.splitlines() if part.strip()) or "error"


if __name__ == "__main__":
    sys.exit(main())
