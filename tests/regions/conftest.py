"""A real NATS supercluster for the region tests: two regions, ``eu`` and ``us``, of three
servers each (``ops.supercluster``), their gateways behind links a test can cut
(``dev.links``)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from voxbus.dev.links import Link, link_gateways
from voxbus.ops.supercluster import Member, Supercluster
from voxbus.runtime.bus import Bus

REGIONS = ("eu", "us")


@dataclass
class Rig:
    cluster: Supercluster
    links: dict[str, Link]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    cluster = Supercluster(REGIONS, 3, tmp_path_factory.mktemp("supercluster"))
    links = link_gateways(cluster)
    try:
        cluster.start()
        yield Rig(cluster, links)
    finally:
        cluster.stop()
        for link in links.values():
            link.stop()


async def region_bus(cluster: Supercluster, region: str, name: str = "test") -> Bus:
    bus = await Bus.connect(cluster.url(region), regions=[region], partitions=8, name=name)
    await bus.provision()
    return bus


def stream_detail(member: Member, stream: str) -> dict[str, object]:
    """``stream`` as ``member`` holds it (its ``/jsz``), or ``{}`` if it holds none of it."""
    with urllib.request.urlopen(f"{member.monitor_url}/jsz?streams=true&config=true",
                                timeout=5) as r:
        data = json.loads(r.read())
    for acc in data.get("account_details", []):
        for s in acc.get("stream_detail", []):
            if s["name"] == stream:
                return dict(s)
    return {}


def leader_of(member: Member, stream: str) -> str:
    cluster = stream_detail(member, stream).get("cluster")
    return str(cluster.get("leader", "")) if isinstance(cluster, dict) else ""


def store_dirs(cluster: Supercluster, region: str) -> list[Path]:
    return [m.store_dir / "jetstream" for m in cluster.region_members(region)]
