"""Which region a room's sessions live in: chosen once, when the agent is dispatched, and never
changed while the agent is in the room.

In order: the region asked for explicitly (``voxbus dispatch ROOM --region eu``, or the room's
metadata ``{"voxbus_region": "eu"}``; if both are given they must agree), else the first rule
of ``BRIDGE_REGION_MAP`` that matches a caller already in the room (``country:DE=eu`` on the
caller's ``country`` attribute, ``node:<livekit region>=us`` on the LiveKit region the caller
is connected through), else ``BRIDGE_REGION``. A region this bridge does not serve is refused
(``RegionRefused``), never quietly replaced by another."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from voxbus.contracts.subjects import check_region

#: The room metadata key (the room's metadata is a JSON object) naming its region.
METADATA_KEY = "voxbus_region"
#: Rule kinds of ``BRIDGE_REGION_MAP``.
RULE_KINDS = ("country", "node")


class RegionRefused(ValueError):
    """The room belongs to a region this bridge cannot serve (or its hints disagree)."""


class RegionMapError(ValueError):
    pass


@dataclass(frozen=True)
class Caller:
    """What routing reads of a participant: its attributes and the LiveKit region it is
    connected through (``ParticipantInfo.region``)."""

    attributes: Mapping[str, str]
    node_region: str = ""


@dataclass(frozen=True)
class Route:
    region: str
    #: Why: ``explicit``, ``metadata``, ``map:<rule>`` or ``default``.
    source: str


def parse_region_map(text: str) -> dict[str, str]:
    """``country:DE=eu,node:lk-us-east=us`` -> ``{"country:DE": "eu", ...}`` (order kept)."""
    rules: dict[str, str] = {}
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        key, sep, region = item.partition("=")
        kind, colon, value = key.strip().partition(":")
        if not sep or not colon or kind not in RULE_KINDS or not value:
            raise RegionMapError(
                f"BRIDGE_REGION_MAP: {item!r} is not <country|node>:<value>=<region>")
        try:
            rules[f"{kind}:{value.strip()}"] = check_region(region.strip())
        except ValueError as e:
            raise RegionMapError(f"BRIDGE_REGION_MAP: {e}") from None
    return rules


def metadata_value(metadata: str, key: str) -> str:
    """The string a room's metadata (a JSON object) gives ``key``, or ``""``."""
    try:
        data = json.loads(metadata) if metadata else None
    except ValueError:
        return ""
    value = data.get(key) if isinstance(data, dict) else None
    return value.strip() if isinstance(value, str) else ""


def metadata_region(metadata: str) -> str:
    """The region a room's metadata names, or ``""``."""
    return metadata_value(metadata, METADATA_KEY)


class RegionRouter:
    def __init__(self, served: Sequence[str], default: str,
                 rules: Mapping[str, str] | None = None) -> None:
        self.served = list(served)
        self.default = default
        self.rules = dict(rules or {})

    def _check(self, region: str, source: str) -> Route:
        if region not in self.served:
            raise RegionRefused(f"region {region!r} ({source}) is not served by this bridge "
                                f"(it serves {', '.join(self.served)})")
        return Route(region, source)

    def choose(self, *, explicit: str = "", metadata: str = "",
               callers: Iterable[Caller] = ()) -> Route:
        meta = metadata_region(metadata)
        if explicit and meta and explicit != meta:
            raise RegionRefused(f"the dispatch asks for region {explicit!r} but the room's "
                                f"metadata says {meta!r}")
        if explicit:
            return self._check(explicit, "explicit")
        if meta:
            return self._check(meta, "metadata")
        for c in callers:
            for rule in (f"country:{c.attributes.get('country', '')}", f"node:{c.node_region}"):
                if rule in self.rules:
                    return self._check(self.rules[rule], f"map:{rule}")
        return self._check(self.default, "default")
