"""Redis down: the cache behaves as empty, fast, and comes back when Redis does."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from resilience import metrics
from resilience.breakers import breaker
from resilience.cache import ResilientRedisCache
from resilience.policies import get_policy
from tests.processes import free_port, wait_for


def cache_at(port: int) -> ResilientRedisCache:
    return ResilientRedisCache(
        f"redis://127.0.0.1:{port}/0",
        {
            "OPTIONS": {"socket_connect_timeout": 0.05, "socket_timeout": 0.05},
            "KEY_PREFIX": "bypass",
        },
    )


def test_a_dead_redis_costs_nothing_once_the_breaker_opens():
    cache = cache_at(free_port())
    started = time.perf_counter()
    for _ in range(200):
        assert cache.get("k", "default") == "default"
        cache.set("k", "v")
    elapsed = time.perf_counter() - started
    assert breaker("redis").current_state == "open"
    assert elapsed < 1.0, f"400 cache calls against a dead Redis took {elapsed:.2f} s"


def test_redis_killed_and_restarted(own_redis, settings):
    cache = cache_at(own_redis.port)
    cache.set("greeting", "hello")
    assert cache.get("greeting") == "hello"

    own_redis.kill()
    # Refused at once, so the window's minimum number of calls opens it (adr/0003).
    for _ in range(get_policy("redis").breaker.minimum_calls):
        assert cache.get("greeting") is None  # a miss, never an exception
    assert breaker("redis").current_state == "open"

    own_redis.start()
    # The open period is over (no sleeping); the probe or a trial then closes it.
    guard = breaker("redis")
    guard.storage.opened_at = datetime.now(UTC) - timedelta(seconds=guard.reset_timeout + 0.1)
    wait_for(
        lambda: cache.set("greeting", "again") is None and cache.get("greeting") == "again",
        timeout=10,
        what="cache back",
    )
    assert breaker("redis").current_state == "closed"


def test_one_stall_that_times_out_every_call_in_flight_leaves_the_breaker_closed(
    own_redis, settings
):
    """A stall of Redis (or of a saturated host) times out every call in flight at once:
    with a process's threads all waiting, that is many failures and no outage. Three in a
    row opened the breaker and bypassed the cache for seconds (adr/0010); half of the
    last 100 calls does not, and a hang still opens it within half the window."""
    policy = get_policy("redis").breaker
    threads = settings.RESILIENCE["process_concurrency"]["web"]
    assert threads < policy.window_size * policy.failure_rate  # the sizing this relies on
    cache = cache_at(own_redis.port)
    for _ in range(policy.window_size):
        assert cache.get("k", "default") == "default"

    bypassed = metrics.DEGRADED_RESPONSES.labels("redis", "cache_bypass")
    before = bypassed._value.get()
    all_in_flight = threading.Barrier(threads)

    def call_during_the_stall() -> None:
        all_in_flight.wait(timeout=10)
        assert cache.get("k", "default") == "default"

    own_redis.pause()
    try:
        callers = [threading.Thread(target=call_during_the_stall) for _ in range(threads)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(timeout=10)
    finally:
        own_redis.resume()
    assert bypassed._value.get() - before == threads  # every one timed out
    assert breaker("redis").current_state == "closed"
    assert cache.get("k", "default") == "default"

    own_redis.pause()  # now a hang: calls keep failing
    try:
        failed = 0
        while breaker("redis").current_state == "closed" and failed < policy.window_size:
            cache.get("k")
            failed += 1
    finally:
        own_redis.resume()
    assert breaker("redis").current_state == "open"
    assert failed <= policy.window_size * policy.failure_rate
