"""Prometheus metrics of the rate limiter (names prefixed ``resilience_ratelimit_``).

Counters and histograms only, so they aggregate across gunicorn workers in
prometheus_client's multiprocess mode without a ``multiprocess_mode``.
"""

from __future__ import annotations

import functools

from prometheus_client import Counter, Histogram

DECISIONS = Counter(
    "resilience_ratelimit_decisions_total",
    "Rate-limit decisions per policy. result: allowed, limited, dry_run_limited, "
    "unavailable (fail-closed policy while Redis is down); mode: redis, fallback "
    "(per-process bucket), fixed_window (django-ratelimit business rules).",
    ["policy", "result", "mode"],
)
REDIS_CALL_SECONDS = Histogram(
    "resilience_ratelimit_redis_call_seconds",
    "Duration of one limiter call to Redis (one EVALSHA per decision), by outcome.",
    ["outcome"],
    # Up to 1 s: beyond the 50 ms socket timeout, slow (a busy host) and hung differ.
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
REDIS_ERRORS = Counter(
    "resilience_ratelimit_redis_errors_total",
    "Limiter calls to Redis that failed or were refused by the open breaker, by error.",
    ["error"],
)


@functools.lru_cache(maxsize=1024)
def decision(policy: str, result: str, mode: str) -> Counter:
    """The child counter of one label set (cached: ``labels()`` costs a lock per call)."""
    return DECISIONS.labels(policy, result, mode)


@functools.lru_cache(maxsize=16)
def redis_call(outcome: str) -> Histogram:
    """The child histogram of one outcome (cached like :func:`decision`)."""
    return REDIS_CALL_SECONDS.labels(outcome)
