"""Shared plumbing for in-process benchmarks: a bench database, timing statistics."""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

BENCH_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/resilient_bench"
BENCH_REDIS_URL = "redis://127.0.0.1:6379/14"


def setup_django() -> None:
    """Configure Django on the bench database (created and migrated if needed).

    Benchmarks share one process (``python -m bench``) and pass ``os.environ`` on to the
    servers they start, so a benchmark changes settings with :func:`without_rate_limits`
    or ``override_settings``, never through the environment.
    """
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
    os.environ.setdefault("DATABASE_URL", BENCH_DATABASE_URL)
    os.environ.setdefault("REDIS_URL", BENCH_REDIS_URL)
    # In-process benchmarks use Django's test client, whose host is "testserver".
    os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
    import django
    from django.core.management import call_command

    django.setup()
    # A benchmark prints figures; the app's per-request log lines would bury them.
    logging.disable(logging.WARNING)
    call_command("ensure_database", verbosity=0)
    call_command("migrate", verbosity=0)


@dataclass(frozen=True)
class Timing:
    """Latency percentiles of one measured series, in milliseconds."""

    count: int
    p50_ms: float
    p99_ms: float
    mean_ms: float

    def __str__(self) -> str:
        return (
            f"n={self.count} p50={self.p50_ms:.2f} ms p99={self.p99_ms:.2f} ms"
            f" mean={self.mean_ms:.2f} ms"
        )


def quantile(values: list[float], q: float, *, empty: float = float("nan")) -> float:
    """The value at fraction ``q`` (0..1) of ``values`` (nearest rank); ``empty`` if none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else empty


def timing(samples_s: list[float]) -> Timing:
    ordered = sorted(samples_s)
    p99 = quantile(ordered, 0.99)
    return Timing(
        count=len(ordered),
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=p99 * 1000,
        mean_ms=statistics.fmean(ordered) * 1000,
    )


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def payments_at(url: str, **parts: dict) -> dict:
    """``settings.RESILIENCE`` with the payments policy aimed at ``url``.

    ``parts`` (``retry=``, ``breaker=``...) are merged into the policy's own parts.
    """
    from django.conf import settings

    base = settings.RESILIENCE["dependencies"]["payments"]
    policy = {**base, "base_url": url}
    for part, values in parts.items():
        policy[part] = {**base.get(part, {}), **values}
    return {
        **settings.RESILIENCE,
        "dependencies": {**settings.RESILIENCE["dependencies"], "payments": policy},
    }


def without_rate_limits():
    """Settings override for benchmarks that send more orders than a client may."""
    from django.conf import settings
    from django.test import override_settings

    return override_settings(
        RESILIENCE_RATELIMIT={**settings.RESILIENCE_RATELIMIT, "enabled": False}
    )


def client_for_new_user():
    """An API client authenticated as a user created for this run."""
    import uuid

    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    from accounts.models import User

    user = User.objects.create_user(
        email=f"bench-{uuid.uuid4().hex}@example.com", password="x" * 12
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client
