"""Redis down: the cache behaves as empty, fast, and comes back when Redis does."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from resilience.breakers import breaker
from resilience.cache import ResilientRedisCache
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
    for _ in range(10):
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
