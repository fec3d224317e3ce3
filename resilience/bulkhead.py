"""Semaphore bulkheads: a cap on concurrent calls to one dependency.

When a slow dependency holds every slot, further callers are refused after a short
wait (``max_wait_s``, clipped to the request deadline) instead of piling up threads:
the rest of the service keeps its capacity. Two scopes (adr/0007):

* ``process``: a semaphore per process, for threads of one process (gunicorn gthread).
  It must be smaller than the process's threads, or it can never fill.
* ``fleet``: one count across every process, in Redis: for prefork Celery children,
  which run one task each, so that a per-process semaphore could never fill there.
  Slots are leases in a sorted set (score = expiry, by Redis' own clock), taken and
  counted in one script, so a killed worker's slot frees itself after ``lease_s``.
  While Redis is unreachable each process falls back to a semaphore of its own.

The database bulkhead is a different mechanism: separate connection pools per workload
(``resilience.db_routing``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis
from redis.commands.core import Script

from resilience import deadline, metrics, registry
from resilience.breaker_state import _shared_state_redis
from resilience.breakers import breaker
from resilience.errors import BreakerOpenError, BulkheadFullError
from resilience.policies import BulkheadPolicy, get_policy

logger = logging.getLogger(__name__)


class Bulkhead:
    """At most ``max_concurrent`` holders at once in this process; others wait up to
    ``max_wait_s``."""

    def __init__(self, name: str, policy: BulkheadPolicy) -> None:
        self.name = name
        self.policy = policy
        self._slots = threading.BoundedSemaphore(policy.max_concurrent)

    def _wait_s(self) -> float:
        return deadline.clip(self.policy.max_wait_s) if self.policy.max_wait_s else 0.0

    def _acquire(self) -> object | None:
        """Take a slot; return what releases it, or None when full."""
        wait = self._wait_s()
        taken = self._slots.acquire(timeout=wait) if wait else self._slots.acquire(blocking=False)
        return self._slots if taken else None

    def _release(self, holder: object) -> None:
        self._slots.release()

    def _refuse(self) -> BulkheadFullError:
        metrics.BULKHEAD_REJECTED.labels(self.name).inc()
        logger.warning(
            "bulkhead rejected",
            extra={
                "dependency": self.name,
                "max_concurrent": self.policy.max_concurrent,
                "scope": self.policy.scope,
            },
        )
        return BulkheadFullError(self.name)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the block, or raise :class:`BulkheadFullError`."""
        holder = self._acquire()
        if holder is None:
            raise self._refuse()
        gauge = metrics.BULKHEAD_IN_USE.labels(self.name)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()
            self._release(holder)


# KEYS[1]: the slots (sorted set of lease tokens, score = expiry in ms, Redis' clock).
# ARGV: limit, lease_ms, token. Drops expired leases, then takes one if there is room.
_TAKE_LEASE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""
_LOCAL_FALLBACK = object()


@functools.cache
def _take_lease_script(client: redis.Redis) -> Script:
    """EVALSHA of the lease script, reloaded by redis-py on NOSCRIPT."""
    return client.register_script(_TAKE_LEASE)


class FleetBulkhead(Bulkhead):
    """At most ``max_concurrent`` holders across every process sharing the Redis."""

    def __init__(self, name: str, policy: BulkheadPolicy) -> None:
        super().__init__(name, policy)
        # One hash tag per bulkhead: the key stays in one slot on Redis Cluster.
        self.key = f"resilience:bulkhead:{{{name}}}"
        self.lease_s = policy.lease_s or _default_lease_s(name)

    def _shared(self, command: Callable[[redis.Redis], object]) -> object:
        """Run ``command(client)`` through the ``redis`` breaker; raise when Redis is out."""
        client = _shared_state_redis()
        return breaker("redis").call(command, client)

    def _acquire(self) -> object | None:
        token = uuid.uuid4().hex
        lease = [self.policy.max_concurrent, round(self.lease_s * 1000), token]
        try:
            taken = self._shared(
                lambda client: _take_lease_script(client)(keys=[self.key], args=lease)
            )
        except (redis.RedisError, BreakerOpenError):
            # Redis is out: bound this process alone rather than refuse all work.
            # Labelled by template (webhook, not webhook:<host>): one series to alert on.
            metrics.BULKHEAD_FALLBACK.labels(self.name.split(":", 1)[0]).inc()
            return _LOCAL_FALLBACK if super()._acquire() is not None else None
        return token if taken == 1 else None

    def _release(self, holder: object) -> None:
        if holder is _LOCAL_FALLBACK:
            super()._release(holder)
            return
        # If Redis is out now, the lease expires by itself after lease_s.
        with contextlib.suppress(redis.RedisError, BreakerOpenError):
            self._shared(lambda client: client.zrem(self.key, holder))

    def in_use(self) -> int:
        """Leases held right now across the fleet (operators, tests)."""
        return int(self._shared(lambda client: client.zcard(self.key)))


def _default_lease_s(dependency: str) -> float:
    """Longer than one attempt can take, so a live holder never loses its slot."""
    timeouts = get_policy(dependency).timeouts
    return timeouts.connect_s + (timeouts.read_s or 0.0) + 5.0


def bulkhead(dependency: str) -> Bulkhead | None:
    """The bulkhead of ``dependency`` in this process, or None when it has none."""
    policy = get_policy(dependency).bulkhead
    if policy is None:
        return None
    kind = FleetBulkhead if policy.scope == "fleet" else Bulkhead
    return registry.live(registry.BULKHEAD, dependency, lambda: kind(dependency, policy))
