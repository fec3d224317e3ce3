"""Redis dies or hangs under traffic: limiting goes local, nothing 5xx, Redis resumes.

Each test runs its own ``redis-server`` (never the shared one) and kills or pauses it
while client threads keep sending requests through the whole Django stack.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from resilience.ratelimit.decisions import DECISIONS_ATTRIBUTE
from resilience.ratelimit.limiter import Limiter, use_limiter
from tests.processes import wait_for
from tests.ratelimit_support import ratelimit_settings

pytestmark = pytest.mark.django_db(transaction=True)

ME = "/api/v1/auth/me"  # flood-limited, answers 401 without touching the database
CLIENT_THREADS = 4
MAX_REQUESTS = 20_000  # a bound on the traffic loop, far above what a run needs


@dataclass(frozen=True)
class Sample:
    status: int
    seconds: float
    mode: str


class Traffic:
    """Client threads hammering ``ME`` until stopped; every answer is recorded."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(CLIENT_THREADS)
        ]

    def _run(self) -> None:
        client = APIClient()
        while not self._stop.is_set() and len(self.samples) < MAX_REQUESTS:
            started = time.perf_counter()
            response = client.get(ME)
            elapsed = time.perf_counter() - started
            decisions = getattr(response.wsgi_request, DECISIONS_ATTRIBUTE, [])
            mode = decisions[-1].mode if decisions else "none"
            with self._lock:
                self.samples.append(Sample(response.status_code, elapsed, mode))

    def count(self, mode: str, start: int = 0) -> int:
        with self._lock:
            return sum(1 for s in self.samples[start:] if s.mode == mode)

    def mark(self) -> int:
        with self._lock:
            return len(self.samples)

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        assert not any(t.is_alive() for t in self._threads), "traffic threads did not stop"


def use_own_redis(settings, server, *, capacity: int, instances: int = 2) -> None:
    ratelimit_settings(
        settings,
        redis_url=server.url,
        instances=instances,
        # A frozen clock and a refill too slow to matter: counts are exact.
        policies={"flood": {"capacity": capacity, "refill_rate": 0.001}},
    )


def decisions(mode: str) -> float:
    return sum(
        REGISTRY.get_sample_value(
            "resilience_ratelimit_decisions_total",
            {"policy": "flood", "result": result, "mode": mode},
        )
        or 0.0
        for result in ("allowed", "limited")
    )


def redis_calls(le: str | None = None) -> float:
    """Limiter calls to Redis so far, all outcomes (only those within ``le`` s if given)."""
    name = "resilience_ratelimit_redis_call_seconds_" + ("count" if le is None else "bucket")
    total = 0.0
    for outcome in ("ok", "error", "breaker_open"):
        labels = {"outcome": outcome} if le is None else {"outcome": outcome, "le": le}
        total += REGISTRY.get_sample_value(name, labels) or 0.0
    return total


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def test_redis_killed_mid_traffic_limits_locally_then_resumes(settings, own_redis, fake_clock):
    use_own_redis(settings, own_redis, capacity=6, instances=2)
    fallback_before = decisions("fallback")
    with use_limiter(Limiter(clock=fake_clock)), Traffic() as traffic:
        wait_for(lambda: traffic.count("redis") >= 30, timeout=20, what="redis-mode traffic")
        own_redis.kill()  # kill -9, mid-traffic
        killed_at = traffic.mark()
        wait_for(
            lambda: traffic.count("fallback", killed_at) >= 30, timeout=20, what="fallback mode"
        )
        own_redis.start()  # same port, empty: no persistence
        restarted_at = traffic.mark()
        # The `redis` breaker lets a trial through after its reset timeout (2 s).
        wait_for(lambda: traffic.count("redis", restarted_at) >= 30, timeout=20, what="redis again")

    samples = traffic.samples
    assert {s.status for s in samples} <= {401, 429}, "no 5xx, ever"
    # Wall-clock bound generous enough for a busy CI host; the per-call bound is below.
    assert max(s.seconds for s in samples) < 1.0, "no request waited on a dead Redis"
    allowed = {
        mode: sum(1 for s in samples if s.mode == mode and s.status == 401)
        for mode in ("redis", "fallback")
    }
    # Redis before the kill (6) and after the restart (a fresh, empty Redis: 6 again);
    # the fallback bucket of this one process holds capacity / instances = 3.
    assert allowed == {"redis": 12, "fallback": 3}
    assert decisions("fallback") - fallback_before >= 30


def test_a_hung_redis_costs_tens_of_milliseconds_then_nothing(settings, own_redis, fake_clock):
    """SIGSTOP: connections are accepted but never answered; timeouts bound the wait."""
    use_own_redis(settings, own_redis, capacity=1_000_000, instances=1)
    calls_before, fast_before = redis_calls(), redis_calls(le="0.25")
    slow_before = redis_calls(le="1.0")
    with use_limiter(Limiter(clock=fake_clock)), Traffic() as traffic:
        wait_for(lambda: traffic.count("redis") >= 50, timeout=20, what="redis-mode traffic")
        own_redis.pause()
        paused_at = traffic.mark()
        try:
            wait_for(
                lambda: traffic.count("fallback", paused_at) >= 200, timeout=20, what="fallback"
            )
        finally:
            own_redis.resume()
        resumed_at = traffic.mark()
        wait_for(lambda: traffic.count("redis", resumed_at) >= 20, timeout=20, what="resumed")

    samples = traffic.samples
    assert {s.status for s in samples} == {401}
    # Every call to the hung server gave up on its 50 ms socket timeout, none near redis-py's
    # own defaults (5 s timeouts, 10 retries): all within 1 s, and all but a stray one
    # (a garbage collection or a busy CI host can stop any thread) within 0.25 s.
    calls = redis_calls() - calls_before
    assert redis_calls(le="1.0") - slow_before == calls
    assert calls - (redis_calls(le="0.25") - fast_before) <= max(1, calls // 100)
    assert max(s.seconds for s in samples) < 1.0
    # Once the breaker is open, fallback requests cost what Redis-mode ones did.
    normal = median([s.seconds for s in samples[:paused_at] if s.mode == "redis"])
    degraded = median([s.seconds for s in samples[paused_at:resumed_at] if s.mode == "fallback"])
    assert degraded <= normal * 2 + 0.005, (normal, degraded)


def test_an_unreachable_redis_never_fails_a_fail_open_request(api_client, settings):
    from tests.processes import free_port

    ratelimit_settings(
        settings,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        instances=1,
        policies={"flood": {"capacity": 2, "refill_rate": 0.001}},
    )
    statuses = [api_client.get(ME).status_code for _ in range(6)]
    assert statuses == [401, 401, 429, 429, 429, 429]
