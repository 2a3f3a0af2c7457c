"""Values for the official NATS Helm chart, one release per region: a three-node JetStream
cluster with file storage, its servers tagged with the region (where the region's streams are
placed: ``contracts.streams.region_tag``), and gateways to the other regions' clusters.

    voxbus deploy nats-values --region eu --regions eu,us [--gateway URL_TEMPLATE]
        [--secure --store DIR]

prints the YAML (``deploy/nats/values-<region>.yaml`` are its output for eu and us). With
``--secure``, the users and permissions of ``voxbus nats --secure`` (``ops.auth``: one identity
per role of the region, the credentials kept in ``<store>/credentials``) go into the servers'
``authorization``: the passwords are in the output, so treat it as a secret.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from voxbus.contracts.streams import DEFAULT_PARTITIONS, region_tag
from voxbus.contracts.subjects import check_region

#: Where a region's gateway is reached from the others ("{region}" replaced): the headless
#: service of the release "nats-<region>" in namespace "nats-<region>" of one Kubernetes
#: cluster; regions in different Kubernetes clusters give their load balancers' addresses.
GATEWAY_URL = "nats://nats-{region}-headless.nats-{region}.svc.cluster.local:7222"
GATEWAY_PORT = 7222


def nats_values(region: str, regions: Sequence[str], *, gateway_url: str = GATEWAY_URL,
                replicas: int = 3, storage: str = "20Gi",
                authorization: dict[str, Any] | None = None) -> dict[str, Any]:
    """The official chart's values for ``region``'s cluster (named after the region)."""
    check_region(region)
    others = [r for r in regions if r != region]
    for r in others:
        check_region(r)
    if region not in regions:
        raise ValueError(f"region {region!r} is not one of {', '.join(regions)}")
    top: dict[str, Any] = {"server_tags": [region_tag(region)]}
    if authorization is not None:
        top["authorization"] = authorization
    return {
        "config": {
            "cluster": {"enabled": True, "replicas": replicas, "merge": {"name": region}},
            "jetstream": {"enabled": True,
                          "fileStore": {"enabled": True, "pvc": {"enabled": True,
                                                                 "size": storage}}},
            "gateway": {
                "enabled": True, "port": GATEWAY_PORT,
                "merge": {"name": region, "gateways": [
                    {"name": r, "urls": [gateway_url.replace("{region}", r)]}
                    for r in others]},
            },
            "monitor": {"enabled": True},
            "merge": top,
        },
    }


def server_config_of(values: dict[str, Any], store_dir: Path) -> str:
    """The parts of one server's nats.conf these values decide (the chart adds the ports and
    routes of its pods): for ``nats-server -t`` to check them."""
    cfg = values["config"]
    conf = {
        **cfg["merge"],
        "jetstream": {"store_dir": str(store_dir)},
        "cluster": {**cfg["cluster"]["merge"], "port": 6222, "routes": []},
        "gateway": {**cfg["gateway"]["merge"], "port": cfg["gateway"]["port"]},
        "http_port": 8222,
    }
    return "\n".join(f"{k}: {json.dumps(v)}" for k, v in conf.items()) + "\n"


def _yaml(value: Any, indent: int = 0) -> list[str]:
    """YAML for the JSON-like ``value`` (block style; strings JSON-quoted, which YAML reads)."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict | list) and v:
                lines.append(f"{pad}{k}:")
                lines += _yaml(v, indent + 1)
            else:
                lines.append(f"{pad}{k}: {json.dumps(v)}")
    elif isinstance(value, list):
        for item in value:
            sub = _yaml(item, indent + 1)
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}- {sub[0].lstrip()}")
                lines += sub[1:]
            else:
                lines.append(f"{pad}- {json.dumps(item)}")
    return lines


def to_yaml(value: dict[str, Any], header: str = "") -> str:
    return header + "\n".join(_yaml(value)) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voxbus deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    n = sub.add_parser("nats-values", help="the official NATS chart's values for one region")
    n.add_argument("--region", required=True)
    n.add_argument("--regions", required=True, help="every region, comma-separated")
    n.add_argument("--gateway", default=GATEWAY_URL,
                   help="where each region's gateway is reached ({region} replaced)")
    n.add_argument("--storage", default="20Gi", help="JetStream file store per server")
    n.add_argument("--secure", action="store_true",
                   help="with the identities' users and permissions (from --store)")
    n.add_argument("--store", default=".voxbus/nats",
                   help="with --secure: where the credentials are kept (made if missing)")
    n.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS)
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    regions = [r.strip() for r in args.regions.split(",") if r.strip()]
    auth: dict[str, Any] | None = None
    try:
        if args.secure:
            from voxbus.ops.auth import Identities, server_config

            ids = Identities.load_or_create(Path(args.store) / "credentials", [args.region])
            auth = json.loads(server_config(ids, partitions=args.partitions)
                              .removeprefix("authorization: "))
        values = nats_values(args.region, regions, gateway_url=args.gateway,
                             storage=args.storage, authorization=auth)
    except ValueError as e:
        print(f"voxbus deploy: {e}", file=sys.stderr)
        return 2
    print(to_yaml(values, header=(
        f"# The official NATS chart's values for region {args.region} (release nats-"
        f"{args.region}):\n# voxbus deploy nats-values --region {args.region} --regions "
        f"{','.join(regions)}\n")), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
