"""Token buckets for what bad input makes: error events. Each rejected message answers with an
``ErrorEvent`` kept in the control stream; without a bound, a flood of bad input would become a
flood of stored events. A session gets a small burst, then one event every few seconds; the
whole process gets a larger burst and a steady rate across all sessions (an attacker with many
session ids). What is over the limit is counted and logged, not published."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class Bucket:
    capacity: float
    per_s: float
    tokens: float
    at: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.per_s)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class ErrorBudget:
    """Per-key buckets (the least recently used forgotten past ``keys``) under one global one."""

    def __init__(self, *, burst: int = 5, per_s: float = 0.2, global_burst: int = 50,
                 global_per_s: float = 5.0, keys: int = 4096) -> None:
        self._burst, self._per_s, self._keys = burst, per_s, keys
        self._global = Bucket(global_burst, global_per_s, float(global_burst), time.monotonic())
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()
        self.suppressed = 0

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(self._burst, self._per_s, float(self._burst), now)
            while len(self._buckets) > self._keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        if bucket.take(now) and self._global.take(now):
            return True
        self.suppressed += 1
        return False
