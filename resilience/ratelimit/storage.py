"""Where buckets live: Redis (fleet-wide, one atomic script) or process memory (fallback).

Both stores run the same algorithm, GCRA, which is a token bucket that stores a single
timestamp per bucket (the "theoretical arrival time"). Both check several buckets at
once and consume from them only when every enforced one has room.

Every Redis call of the limiter goes through :meth:`RedisBucketStore.execute`, the one
seam where the process-local ``redis`` circuit breaker and the latency metric sit.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pybreaker
import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from resilience.breakers import BreakerOpenError, breaker
from resilience.ratelimit import metrics
from resilience.ratelimit.config import RedisOptions
from resilience.redis_client import client_from_url, is_cluster_url

T = TypeVar("T")
MICROS = 1_000_000
LUA_SOURCE = (Path(__file__).parent / "token_bucket.lua").read_text()
# The dependency name of the breaker that guards this Redis (settings.RESILIENCE).
BREAKER_NAME = "redis"


@dataclass(frozen=True)
class Bucket:
    """One bucket to check: its key and shape, the request's cost, and whether it binds."""

    key: str
    capacity: float
    interval_s: float
    cost: int = 1
    enforce: bool = True


@dataclass(frozen=True)
class BucketState:
    """A bucket's answer: room or not, tokens left, and the times a client needs."""

    ok: bool
    remaining: int
    retry_after_s: float
    next_token_s: float
    reset_s: float


class StoreUnavailableError(Exception):
    """Redis could not answer (down, slow, or its breaker is open)."""


def build_client(options: RedisOptions) -> redis.Redis:
    """The limiter's own Redis client: never the cache's, never retried.

    Its settings (URL, tens of milliseconds for connect and socket, no client-level
    retry: the fallback bucket is cheaper than waiting) also shape the connection each
    serving thread keeps for decisions (:class:`RedisBucketStore`). The small
    ``BlockingConnectionPool`` itself serves the operator calls (adr/0004).

    A ``redis-cluster://`` URL gives a cluster client with the same timeouts and no
    retry; it routes each decision to the master of its keys' slot (one slot per
    decision: hash tags, :meth:`resilience.ratelimit.limiter.Limiter.key`).
    """
    if is_cluster_url(options.url):
        return client_from_url(
            options.url,
            max_connections=options.max_connections,
            socket_timeout=options.socket_timeout_s,
            socket_connect_timeout=options.connect_timeout_s,
            retry=Retry(NoBackoff(), retries=0),
        )
    pool = redis.BlockingConnectionPool.from_url(
        options.url,
        max_connections=options.max_connections,
        timeout=options.pool_timeout_s,
        socket_timeout=options.socket_timeout_s,
        socket_connect_timeout=options.connect_timeout_s,
        retry=Retry(NoBackoff(), retries=0),
    )
    return redis.Redis(connection_pool=pool)


class RedisBucketStore:
    """Buckets in Redis, decided by one EVALSHA per request (the script is in Lua).

    ``clock`` (seconds) is for tests only; without it the script reads Redis' own
    clock, so every web process agrees on time whatever their hosts' clocks say.

    The script runs on a connection each serving thread keeps for itself, built with the
    pool's settings (URL, timeouts, no retry). redis-py 8 spends about 30 us of CPU per
    pool checkout (observability hooks and a ``poll`` for stale data), as much as the
    round trip itself, on the one Redis call every request makes; a thread's own
    connection needs neither, since nothing else ever uses it and it is dropped on any
    error. Connections are therefore bounded by serving threads (``WEB_WORKERS x
    WEB_THREADS``); the pool serves the rare operator calls (adr/0004).
    """

    def __init__(
        self, client: redis.Redis | RedisCluster, *, clock: Callable[[], float] | None = None
    ) -> None:
        self.client = client
        self._cluster = isinstance(client, RedisCluster)
        self._clock = clock
        self._sha = hashlib.sha1(LUA_SOURCE.encode()).hexdigest()  # noqa: S324 - Redis' id
        self._thread = threading.local()

    def execute(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one Redis call behind the ``redis`` breaker; the limiter's only way to Redis.

        Raises :class:`StoreUnavailableError` for any Redis error or an open breaker, so
        the caller falls back instead of failing the request.
        """
        if not settings.RESILIENCE_ENABLED:
            # The chaos baseline: no breaker, no fallback; a Redis error fails the request.
            return func(*args, **kwargs)
        started = time.perf_counter()
        try:
            result = breaker(BREAKER_NAME).call(func, *args, **kwargs)
        except (redis.RedisError, pybreaker.CircuitBreakerError) as exc:
            outcome = "breaker_open" if isinstance(exc, BreakerOpenError) else "error"
            metrics.redis_call(outcome).observe(time.perf_counter() - started)
            metrics.REDIS_ERRORS.labels(type(exc).__name__).inc()
            raise StoreUnavailableError(type(exc).__name__) from exc
        metrics.redis_call("ok").observe(time.perf_counter() - started)
        return result

    def consume(self, buckets: Sequence[Bucket]) -> tuple[bool, list[BucketState]]:
        """Check ``buckets`` in one round trip; consume from all of them or from none."""
        now = "" if self._clock is None else str(int(self._clock() * MICROS))
        args = [now] + [
            f"{float(b.capacity)!r} {b.interval_s * MICROS!r} {b.cost} {1 if b.enforce else 0}"
            for b in buckets
        ]
        raw = self.execute(self._run_script, [b.key for b in buckets], args)
        numbers = [int(n) for n in raw.split()]
        states = [
            BucketState(
                ok=bool(numbers[i]),
                remaining=numbers[i + 1],
                retry_after_s=numbers[i + 2] / MICROS,
                next_token_s=numbers[i + 3] / MICROS,
                reset_s=numbers[i + 4] / MICROS,
            )
            for i in range(1, len(numbers), 5)
        ]
        return bool(numbers[0]), states

    def _run_script(self, keys: Sequence[str], args: Sequence[str]) -> bytes:
        """``EVALSHA`` on this thread's connection, loading the script on ``NOSCRIPT``."""
        if self._cluster:
            return self._run_script_on_cluster(keys, args)
        owned = getattr(self._thread, "connection", None)
        if owned is None or owned[0] != os.getpid():
            # A forked child inherits the forking thread's socket: it gets its own.
            pool = self.client.connection_pool
            owned = (os.getpid(), pool.connection_class(**pool.connection_kwargs))
            self._thread.connection = owned
        connection = owned[1]
        try:
            return self._evalsha(connection, keys, args)
        except redis.exceptions.ResponseError:
            raise  # the reply was read in full: the connection is still in step
        except BaseException:
            # A timeout may leave a reply in flight: never reuse a connection out of step.
            connection.disconnect()
            raise

    def _evalsha(self, connection: Any, keys: Sequence[str], args: Sequence[str]) -> bytes:
        """``EVALSHA`` on ``connection``; a Redis that lost the script (restarted, flushed)
        gets it loaded once, then runs it: still one decision."""
        try:
            connection.send_command("EVALSHA", self._sha, len(keys), *keys, *args)
            return connection.read_response()
        except redis.exceptions.NoScriptError:
            connection.send_command("SCRIPT", "LOAD", LUA_SOURCE)
            connection.read_response()
            connection.send_command("EVALSHA", self._sha, len(keys), *keys, *args)
            return connection.read_response()

    def _run_script_on_cluster(self, keys: Sequence[str], args: Sequence[str]) -> bytes:
        """``EVALSHA`` on the master of the keys' slot, on this thread's connection to it.

        As on one Redis, each serving thread keeps its own connection, one per master it
        talks to; the cluster client only tells which master owns the slot. A ``MOVED``
        (slots moved after a failover) or a dead master fails this one decision (the
        caller falls back) and re-reads the slot map at most once per second. Keys in
        several slots (policies decided together without a shared ``slot``) fail too,
        before anything is sent.
        """
        client = self.client
        slot = client.keyslot(keys[0])
        if any(client.keyslot(key) != slot for key in keys[1:]):
            raise redis.exceptions.ResponseError(f"CROSSSLOT keys {list(keys)} span slots")
        node = client.nodes_manager.get_node_from_slot(slot)
        connections = getattr(self._thread, "nodes", None)
        if connections is None or connections[0] != os.getpid():
            connections = (os.getpid(), {})
            self._thread.nodes = connections
        connection = connections[1].get(node.name)
        if connection is None:
            pool = client.get_redis_connection(node).connection_pool
            connection = pool.connection_class(**pool.connection_kwargs)
            connections[1][node.name] = connection
        try:
            return self._evalsha(connection, keys, args)
        except (redis.exceptions.MovedError, redis.exceptions.AskError, redis.ConnectionError):
            connection.disconnect()
            connections[1].pop(node.name, None)
            self._refresh_slots()
            raise
        except redis.exceptions.ResponseError:
            raise
        except BaseException:
            connection.disconnect()
            raise

    def _refresh_slots(self) -> None:
        """Re-read the cluster's slot map, at most once per second per process."""
        now = time.monotonic()
        if now - getattr(self, "_refreshed_at", 0.0) < 1.0:
            return
        self._refreshed_at = now
        # No seed answers: the next refresh tries again.
        with contextlib.suppress(redis.RedisError, RedisClusterException):
            self.client.nodes_manager.initialize()

    def delete(self, keys: Sequence[str]) -> int:
        """Empty the given buckets' history (an operator's reset); returns how many existed."""
        return int(self.execute(self.client.delete, *keys)) if keys else 0

    def peek(self, key: str) -> float | None:
        """Stored TAT of ``key`` in seconds on Redis' clock, or None (a full bucket)."""
        raw = self.execute(self.client.get, key)
        return None if raw is None else float(raw) / MICROS


class LocalBucketStore:
    """The same algorithm in process memory: the fallback while Redis is unavailable.

    The limiter hands it buckets whose capacity and rate are already divided by the
    number of processes that share the limit. Memory is bounded: beyond ``max_keys``
    buckets, full ones are dropped first (they carry no state), then the oldest.
    """

    def __init__(self, *, max_keys: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_keys = max_keys
        self._clock = clock
        self._tats: dict[str, float] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._tats)

    def consume(self, buckets: Sequence[Bucket]) -> tuple[bool, list[BucketState]]:
        """Check and consume like the Lua script, under one lock (atomic per process)."""
        with self._lock:
            now = self._clock()
            tats = [max(self._tats.get(b.key, now), now) for b in buckets]
            new_tats = [tat + b.cost * b.interval_s for tat, b in zip(tats, buckets, strict=True)]
            oks = [
                new - now <= b.capacity * b.interval_s + 1e-12
                for new, b in zip(new_tats, buckets, strict=True)
            ]
            allowed = all(ok for ok, b in zip(oks, buckets, strict=True) if b.enforce)
            states = []
            for bucket, tat, new_tat, ok in zip(buckets, tats, new_tats, oks, strict=True):
                stored = tat
                if allowed and ok:
                    stored = new_tat
                    self._tats.pop(bucket.key, None)  # re-insert: dict order is recency
                    self._tats[bucket.key] = stored
                tokens = bucket.capacity - (stored - now) / bucket.interval_s
                remaining = max(0, math.floor(tokens + 1e-9))
                states.append(
                    BucketState(
                        ok=ok,
                        remaining=remaining,
                        retry_after_s=0.0
                        if ok
                        else new_tat - now - bucket.capacity * bucket.interval_s,
                        next_token_s=((remaining + 1) - tokens) * bucket.interval_s,
                        reset_s=stored - now,
                    )
                )
            if len(self._tats) > self._max_keys:
                self._evict(now)
            return allowed, states

    def _evict(self, now: float) -> None:
        # Called with the lock held. Full buckets first, then least recently used.
        for key in [key for key, tat in self._tats.items() if tat <= now]:
            del self._tats[key]
        target = int(self._max_keys * 0.9)
        while len(self._tats) > target:
            del self._tats[next(iter(self._tats))]

    def clear(self) -> None:
        """Forget every bucket (tests, and an operator's reset of one process)."""
        with self._lock:
            self._tats.clear()
