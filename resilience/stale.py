"""Stale-on-error reads: serve the last good answer from the cache while Postgres is down.

``read_through(key, compute, fresh_s=..., stale_s=...)`` returns a cached value younger
than ``fresh_s`` without computing; otherwise computes it and stores it for ``stale_s``.
When computing fails because a dependency is unavailable (any refusal of
:mod:`resilience.errors`, or the database driver's connection errors), it returns the
stored value if it is younger than ``stale_s``, marked stale with its age, instead of
failing.

The cache itself is best effort (``resilience.cache``): with Redis down too, a read
simply computes, and a failure surfaces as the usual 503. ``RESILIENCE_ENABLED=False``
(the chaos baseline, the same service without the patterns) serves no stale copy: the
failure surfaces, as it would without this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.core.cache import cache

from resilience import degrade, metrics
from resilience.errors import DEGRADE_ON

T = TypeVar("T")

# Response headers of a degraded answer (documented in runbooks/graceful-degradation.md).
DEGRADED_HEADER = "X-Degraded"


@dataclass(frozen=True)
class Read:
    """A value, and whether it is a stale copy served because the source was down."""

    value: Any
    stale: bool = False
    age_s: float = 0.0

    def headers(self) -> dict[str, str]:
        """``Age`` and ``X-Degraded: stale`` on a stale answer; nothing otherwise."""
        if not self.stale:
            return {}
        return {DEGRADED_HEADER: "stale", "Age": str(int(self.age_s))}


def read_through(
    key: str,
    compute: Callable[[], T],
    *,
    fresh_s: float,
    stale_s: float,
    dependency: str = "postgres",
) -> Read:
    """Compute (or reuse a fresh copy of) a value; fall back to a stale copy on outage."""
    entry = cache.get(key)
    now = time.time()
    if entry is not None and fresh_s and now - entry["stored_at"] < fresh_s:
        return Read(entry["value"])
    try:
        value = compute()
    except DEGRADE_ON as exc:
        degrade.or_raise(exc)
        if entry is not None and now - entry["stored_at"] < stale_s:
            metrics.DEGRADED_RESPONSES.labels(dependency, "stale_cache").inc()
            return Read(entry["value"], stale=True, age_s=now - entry["stored_at"])
        raise
    cache.set(key, {"value": value, "stored_at": now}, timeout=stale_s)
    return Read(value)
