"""Django's Redis cache behind the process-local ``redis`` breaker.

A cache that is down must cost nothing: every operation is bounded by the client's
tens-of-milliseconds timeouts, failures open the breaker, and while it is open the
cache behaves as empty (reads miss, writes are dropped). Nothing turns into a 5xx.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache

from resilience import metrics
from resilience.breakers import BreakerOpenError, breaker

logger = logging.getLogger(__name__)


class ResilientRedisCache(RedisCache):
    """``RedisCache`` whose operations fall back to a miss when Redis is unavailable."""

    def _guarded(
        self, fallback: Any, operation: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        if not settings.RESILIENCE_ENABLED:  # the chaos baseline: errors propagate
            return operation(*args, **kwargs)
        try:
            return breaker("redis").call(operation, *args, **kwargs)
        except (redis.RedisError, BreakerOpenError) as exc:
            metrics.DEGRADED_RESPONSES.labels("redis", "cache_bypass").inc()
            logger.info(
                "cache bypassed", extra={"dependency": "redis", "error": type(exc).__name__}
            )
            return fallback

    def get(self, key, default=None, version=None):
        return self._guarded(default, super().get, key, default, version)

    def get_many(self, keys, version=None):
        return self._guarded({}, super().get_many, keys, version)

    def has_key(self, key, version=None):
        return self._guarded(False, super().has_key, key, version)

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self._guarded(None, super().set, key, value, timeout, version)

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self._guarded(False, super().add, key, value, timeout, version)

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        return self._guarded(False, super().touch, key, timeout, version)

    def delete(self, key, version=None):
        return self._guarded(False, super().delete, key, version)

    def delete_many(self, keys, version=None):
        return self._guarded(None, super().delete_many, keys, version)

    def set_many(self, data, timeout=DEFAULT_TIMEOUT, version=None):
        return self._guarded(list(data), super().set_many, data, timeout, version)

    def incr(self, key, delta=1, version=None):
        return self._guarded(None, super().incr, key, delta, version)

    def clear(self):
        return self._guarded(False, super().clear)
