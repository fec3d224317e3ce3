"""The one registry of named policies and the live objects built from them.

Every per-process object the library builds from settings (dependency policies,
breakers, bulkheads, retry budgets, HTTP clients, the concurrency limiter, the
rate-limit configuration) lives here under ``(kind, name)``, built on first use:
``live("breaker", "payments", build)``. One call, :func:`reset_all`, forgets them all
(tests, and any change of the settings they were built from); :func:`built` lists what
a kind holds (the metrics scrape, readiness, ``manage.py resilience``).

What is shared across processes (breaker state, fleet bulkhead leases, token buckets)
lives in Redis or Postgres, not here: forgetting a live object never loses it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

POLICY = "policy"
BREAKER = "breaker"
BULKHEAD = "bulkhead"
BUDGET = "budget"
CLIENT = "client"
CONCURRENCY = "concurrency"
RATELIMIT = "ratelimit"

# The settings each kind is built from: overriding one (a test) forgets what it built.
BUILT_FROM: dict[str, frozenset[str]] = {
    POLICY: frozenset({"RESILIENCE", "RESILIENCE_ENABLED"}),
    BREAKER: frozenset({"RESILIENCE", "RESILIENCE_ENABLED"}),
    BULKHEAD: frozenset({"RESILIENCE", "RESILIENCE_ENABLED"}),
    BUDGET: frozenset({"RESILIENCE", "RESILIENCE_ENABLED"}),
    CLIENT: frozenset({"RESILIENCE", "RESILIENCE_ENABLED"}),
    CONCURRENCY: frozenset({"RESILIENCE_CONCURRENCY", "RESILIENCE_ENABLED"}),
    RATELIMIT: frozenset({"RESILIENCE_RATELIMIT"}),
}

_objects: dict[tuple[str, str], Any] = {}
# Re-entrant: building a breaker reads its policy, which may be built on the way.
_lock = threading.RLock()


def live(kind: str, name: str, build: Callable[[], T]) -> T:
    """The object ``(kind, name)`` of this process, built by ``build()`` on first use."""
    key = (kind, name)
    found = _objects.get(key)
    if found is not None:
        return found
    with _lock:
        found = _objects.get(key)
        if found is None:
            found = build()
            _objects[key] = found
        return found


def built(kind: str) -> dict[str, Any]:
    """Every object of ``kind`` built so far, by name (none are created by asking)."""
    with _lock:
        return {name: obj for (k, name), obj in _objects.items() if k == kind}


def forget(*kinds: str) -> None:
    """Forget the objects of ``kinds`` (all kinds when none is given)."""
    with _lock:
        for key in [key for key in _objects if not kinds or key[0] in kinds]:
            del _objects[key]


def reset_all() -> None:
    """Forget every policy and live object of this process (tests call this once)."""
    forget()


def on_setting_changed(setting: str, **_: Any) -> None:
    """``setting_changed`` receiver: a test that overrides a setting gets fresh objects."""
    stale = [kind for kind, settings in BUILT_FROM.items() if setting in settings]
    if stale:
        forget(*stale)
