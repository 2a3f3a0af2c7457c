"""Settings from environment variables, read once into frozen objects and passed explicitly.

Bus settings use the ``VOXBUS_`` prefix (plus the conventional ``NATS_URL``); each service has its
own prefix (``STT_``, ``LLM_``, ``TTS_``, ``BRIDGE_``).
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec

from voxbus.contracts.streams import DEFAULT_PARTITIONS, LEASE_TTL_S, Retention
from voxbus.contracts.subjects import check_region


class SettingsError(ValueError):
    pass


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


@dataclass(frozen=True, kw_only=True)
class BusSettings:
    url: str = "nats://127.0.0.1:4222"
    regions: tuple[str, ...] = ("local",)
    partitions: int = DEFAULT_PARTITIONS
    user: str | None = None
    password: str | None = None
    #: From ``VOXBUS_CREDENTIALS`` (a file of ``voxbus nats --secure``): who this process is.
    identity: IdentityFile | None = None
    #: The lease bucket's ttl where this process provisions it (``VOXBUS_LEASE_TTL_S``).
    lease_ttl_s: float = LEASE_TTL_S

    def retention(self) -> Retention:
        return Retention(leases_s=self.lease_ttl_s)

    @property
    def inbox_prefix(self) -> str | None:
        return self.identity.inbox_prefix if self.identity else None

    def require_role(self, *roles: str) -> None:
        """A process of one role must not run under another's identity (it would be refused
        half-way, one permission at a time): say so before connecting."""
        if self.identity is not None and self.identity.role not in roles:
            raise SettingsError(
                f"VOXBUS_CREDENTIALS holds the {self.identity.role!r} identity "
                f"({self.identity.user}); this process needs {' or '.join(map(repr, roles))}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BusSettings:
        env = Env("VOXBUS", environ)
        e = os.environ if environ is None else environ
        creds = env.str("CREDENTIALS", "")
        identity = read_identity(Path(creds)) if creds else None
        default_regions = identity.region if identity else "local"
        regions = tuple(r.strip() for r in env.str("REGIONS", default_regions).split(",")
                        if r.strip())
        for r in regions:
            check_region(r)
        if identity is not None and regions != (identity.region,):
            raise SettingsError(
                f"the identity in VOXBUS_CREDENTIALS ({identity.user}) serves region "
                f"{identity.region!r} only, not VOXBUS_REGIONS={','.join(regions)}: run one "
                "process per region, each with its region's identity")
        return cls(
            url=e.get("NATS_URL") or cls.url,
            regions=regions,
            partitions=env.int("PARTITIONS", DEFAULT_PARTITIONS),
            user=identity.user if identity else (e.get("NATS_USER") or None),
            password=identity.password if identity else (e.get("NATS_PASSWORD") or None),
            identity=identity,
            lease_ttl_s=_positive(env, "LEASE_TTL_S", LEASE_TTL_S),
        )


def _positive(env: Env, name: str, default: float) -> float:
    value = env.float(name, default)
    if value <= 0:
        raise SettingsError(f"VOXBUS_{name} must be > 0, got {value}")
    return value
