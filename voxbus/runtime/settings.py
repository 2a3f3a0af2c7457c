"""Settings from environment variables, read once into frozen objects and passed explicitly.

Bus settings use the ``VOXBUS_`` prefix (plus the conventional ``NATS_URL``); each service has its
own prefix (``STT_``, ``LLM_``, ``TTS_``, ``BRIDGE_``).
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Mapping
from dataclasses import dataclass

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


@dataclass(frozen=True, kw_only=True)
class BusSettings:
    url: str = "nats://127.0.0.1:4222"
    regions: tuple[str, ...] = ("local",)
    partitions: int = DEFAULT_PARTITIONS
    user: str | None = None
    password: str | None = None
    #: The lease bucket's ttl where this process provisions it (``VOXBUS_LEASE_TTL_S``).
    lease_ttl_s: float = LEASE_TTL_S

    def retention(self) -> Retention:
        return Retention(leases_s=self.lease_ttl_s)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BusSettings:
        env = Env("VOXBUS", environ)
        e = os.environ if environ is None else environ
        regions = tuple(r.strip() for r in env.str("REGIONS", "local").split(",") if r.strip())
        for r in regions:
            check_region(r)
        return cls(
            url=e.get("NATS_URL") or cls.url,
            regions=regions,
            partitions=env.int("PARTITIONS", DEFAULT_PARTITIONS),
            user=e.get("NATS_USER") or None,
            password=e.get("NATS_PASSWORD") or None,
            lease_ttl_s=_positive(env, "LEASE_TTL_S", LEASE_TTL_S),
        )


def _positive(env: Env, name: str, default: float) -> float:
    value = env.float(name, default)
    if value <= 0:
        raise SettingsError(f"VOXBUS_{name} must be > 0, got {value}")
    return value
