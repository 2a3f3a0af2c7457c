"""Settings from environment variables, read once into frozen objects and passed explicitly.

Bus settings use the ``VOXBUS_`` prefix (plus the conventional ``NATS_URL``); each service has its
own prefix (``STT_``, ``LLM_``, ``TTS_``, ``BRIDGE_``).
"""

from __future__ import annotations

import builtins
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from voxbus.contracts.streams import DEFAULT_PARTITIONS, LEASE_TTL_S, Retention
from voxbus.contracts.subjects import check_region
from voxbus.errors import UserError


class SettingsError(UserError, ValueError):
    """A setting (an environment variable, a file it names) that cannot be used: one line."""


class Env:
    """Typed reads of ``<PREFIX>_<NAME>`` variables with clear errors."""

    def __init__(self, prefix: str, environ: Mapping[str, str] | None = None) -> None:
        self.prefix = prefix
        self.environ = os.environ if environ is None else environ

    def _raw(self, name: builtins.str) -> builtins.str | None:
        return self.environ.get(f"{self.prefix}_{name}")

    def str(self, name: builtins.str, default: builtins.str) -> builtins.str:
        v = self._raw(name)
        return default if v is None or v == "" else v

    def int(self, name: builtins.str, default: builtins.int) -> builtins.int:
        v = self._raw(name)
        try:
            return default if not v else int(v)
        except ValueError:
            raise SettingsError(f"{self.prefix}_{name}={v!r} is not an integer") from None

    def float(self, name: builtins.str, default: builtins.float) -> builtins.float:
        v = self._raw(name)
        try:
            return default if not v else float(v)
        except ValueError:
            raise SettingsError(f"{self.prefix}_{name}={v!r} is not a number") from None

    def bool(self, name: builtins.str, default: builtins.bool) -> builtins.bool:
        v = self._raw(name)
        if not v:
            return default
        if v.lower() in ("1", "true", "yes", "on"):
            return True
        if v.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{self.prefix}_{name}={v!r} is not a boolean")


class IdentityFile(msgspec.Struct, frozen=True, kw_only=True):
    """One NATS identity's credentials file (JSON, mode 0600, written by ``voxbus nats
    --secure``): what a process of role ``role`` in ``region`` needs to log in."""

    user: str
    password: str
    role: str
    region: str
    inbox_prefix: str


def read_identity(path: Path) -> IdentityFile:
    """The identity in ``path``, or a one-line ``SettingsError`` saying why it can't be used."""
    try:
        ident = msgspec.json.decode(path.read_bytes(), type=IdentityFile)
    except OSError as e:
        raise SettingsError(f"cannot read credentials {path}: {e.strerror}") from None
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise SettingsError(f"credentials {path} are not a voxbus identity file: {e}") from None
    try:
        check_region(ident.region)
    except ValueError as e:
        raise SettingsError(f"credentials {path}: {e}") from None
    return ident


def region_env_suffix(region: str) -> str:
    """``eu-west`` -> ``EU_WEST``: the tail of a per-region variable (``NATS_URL_EU_WEST``)."""
    return region.upper().replace("-", "_")


@dataclass(frozen=True, kw_only=True)
class BusSettings:
    #: The servers of this process's region, comma-separated.
    url: str = "nats://127.0.0.1:4222"
    #: The regions this process serves, comma-separated (``VOXBUS_REGION``: one, as ``voxbus
    #: nats`` prints it); unset: the identity's region, else ``local``.
    regions: tuple[str, ...] = ("local",)
    #: Partitions of each region stream (a session always maps to one); stage replicas split
    #: them by lease.
    partitions: int = DEFAULT_PARTITIONS
    #: A NATS user, where no credentials file is given.
    user: str | None = None
    #: That user's password.
    password: str | None = None
    #: The path of a credentials file written by ``voxbus nats --secure``: who this process is.
    identity: IdentityFile | None = None
    #: The lease bucket's ttl where this process provisions it.
    lease_ttl_s: float = LEASE_TTL_S
    #: Replicas of what this process creates (1, 3 or 5; 0: three where the region's cluster
    #: has three servers, else one).
    replicas: int = 0
    #: A region's own servers, where they are not ``NATS_URL``'s (a process of several regions).
    region_urls: Mapping[str, str] = field(default_factory=dict)
    #: A region's own credentials file, for a process of several regions on secure servers.
    region_identities: Mapping[str, IdentityFile] = field(default_factory=dict)
    #: Seal every personal payload under its session's own key, so a purge is final for every
    #: copy (``contracts.sealing``). Off only to compare costs: a purge then relies on the
    #: erase alone.
    seal: bool = True

    def url_for(self, region: str) -> str:
        return self.region_urls.get(region, self.url)

    def for_region(self, region: str) -> BusSettings:
        """This process's settings for one region: that region's servers and identity."""
        ident = self.region_identities.get(region, self.identity)
        return dataclasses.replace(
            self, url=self.url_for(region), regions=(region,), region_urls={},
            region_identities={}, identity=ident,
            user=ident.user if ident else self.user,
            password=ident.password if ident else self.password)

    def per_region(self) -> list[BusSettings]:
        """One connection's settings per region when regions have servers or identities of
        their own (each region's traffic stays on its servers); else one for all."""
        if not self.region_urls and not self.region_identities:
            return [self]
        return [self.for_region(r) for r in self.regions]

    def retention(self) -> Retention:
        return Retention(leases_s=self.lease_ttl_s)

    @property
    def inbox_prefix(self) -> str | None:
        return self.identity.inbox_prefix if self.identity else None

    def require_role(self, *roles: str) -> None:
        """A process of one role must not run under another's identity (it would be refused
        half-way, one permission at a time): say so before connecting."""
        for ident in [self.identity, *self.region_identities.values()]:
            if ident is not None and ident.role not in roles:
                raise SettingsError(
                    f"VOXBUS_CREDENTIALS holds the {ident.role!r} identity "
                    f"({ident.user}); this process needs {' or '.join(map(repr, roles))}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BusSettings:
        env = Env("VOXBUS", environ)
        e = os.environ if environ is None else environ
        creds = env.str("CREDENTIALS", "")
        identity = read_identity(Path(creds)) if creds else None
        regions = _regions(env, identity)
        region_identities: dict[str, IdentityFile] = {}
        for r in regions:
            if path := env.str(f"CREDENTIALS_{region_env_suffix(r)}", ""):
                ident = read_identity(Path(path))
                if ident.region != r:
                    raise SettingsError(
                        f"VOXBUS_CREDENTIALS_{region_env_suffix(r)} holds {ident.user}, an "
                        f"identity of region {ident.region!r}, not {r!r}")
                region_identities[r] = ident
        if len(regions) == 1 and regions[0] in region_identities:  # the same as CREDENTIALS
            identity = region_identities.pop(regions[0])
        if identity is not None and identity.region not in regions:
            raise SettingsError(
                f"the identity in VOXBUS_CREDENTIALS ({identity.user}) serves region "
                f"{identity.region!r}, not VOXBUS_REGIONS={','.join(regions)}")
        if identity is not None or region_identities:
            lacking = [r for r in regions if r not in region_identities
                       and (identity is None or identity.region != r)]
            if lacking:
                raise SettingsError(
                    f"no identity for region(s) {','.join(lacking)}: an identity serves one "
                    "region; give each its own (VOXBUS_CREDENTIALS_<REGION>), or run one "
                    "process per region")
        region_urls = {r: u for r in regions
                       if (u := (e.get(f"NATS_URL_{region_env_suffix(r)}") or "").strip())}
        replicas = env.int("REPLICAS", 0)
        if replicas not in (0, 1, 3, 5):
            raise SettingsError(f"VOXBUS_REPLICAS must be 1, 3 or 5 (0: automatic), got "
                                f"{replicas}")
        partitions = env.int("PARTITIONS", DEFAULT_PARTITIONS)
        if partitions < 1:
            raise SettingsError(f"VOXBUS_PARTITIONS must be at least 1, got {partitions}")
        main = identity if identity is not None and len(regions) == 1 else None
        return cls(
            url=e.get("NATS_URL") or cls.url,
            regions=regions,
            partitions=partitions,
            user=main.user if main else (e.get("NATS_USER") or None),
            password=main.password if main else (e.get("NATS_PASSWORD") or None),
            identity=identity,
            lease_ttl_s=_positive(env, "LEASE_TTL_S", LEASE_TTL_S),
            replicas=replicas,
            region_urls=region_urls,
            region_identities=(
                {identity.region: identity, **region_identities}
                if identity is not None and len(regions) > 1 else region_identities),
            seal=seal_from_env(environ),
        )


def seal_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """``VOXBUS_SEAL`` (``BusSettings.seal``), for a bus connected without settings too."""
    return Env("VOXBUS", environ).bool("SEAL", BusSettings.seal)


def _regions(env: Env, identity: IdentityFile | None) -> tuple[str, ...]:
    """``VOXBUS_REGIONS`` (comma-separated), or ``VOXBUS_REGION`` (what ``voxbus nats`` prints
    per region), or the identity's region, or ``local``."""
    many, one = env.str("REGIONS", ""), env.str("REGION", "").strip()
    if many and one and [r.strip() for r in many.split(",") if r.strip()] != [one]:
        raise SettingsError(f"VOXBUS_REGION={one} and VOXBUS_REGIONS={many} disagree: set one")
    raw = many or one or (identity.region if identity else "local")
    regions = tuple(r.strip() for r in raw.split(",") if r.strip())
    if not regions:
        raise SettingsError("VOXBUS_REGIONS names no region")
    for r in regions:
        try:
            check_region(r)
        except ValueError as e:
            raise SettingsError(f"VOXBUS_REGIONS: {e}") from None
    if len(set(regions)) != len(regions):
        raise SettingsError(f"VOXBUS_REGIONS repeats a region: {raw}")
    return regions


def _positive(env: Env, name: str, default: float) -> float:
    value = env.float(name, default)
    if value <= 0:
        raise SettingsError(f"VOXBUS_{name} must be > 0, got {value}")
    return value
