"""Django's Redis cache behind the process-local ``redis`` breaker.

A cache that is down must cost nothing: every operation is bounded by the client's
tens-of-milliseconds timeouts, failures open the breaker, and while it is open the
cache behaves as empty (reads miss, writes are dropped). Nothing turns into a 5xx.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache, RedisCacheClient

from resilience import metrics
from resilience.breakers import BreakerOpenError, breaker
from resilience.redis_client import client_from_url, is_cluster_url

logger = logging.getLogger(__name__)


class ClusterCacheClient(RedisCacheClient):
    """Django's Redis cache client on a Redis Cluster (``redis-cluster://`` LOCATION).

    One cluster client per process (it keeps a pool per node); the multi-key operations
    that Django sends as one command (``MGET``, ``MSET``) are split per slot.
    """

    def __init__(self, servers: list[str], **options: Any) -> None:
        self._url = servers[0]
        django_only = {"serializer", "pool_class", "parser_class"}
        self._cluster_options = {k: v for k, v in options.items() if k not in django_only}
        super().__init__(servers, serializer=options.get("serializer"))
        self._cluster_client: Any = None
        self._cluster_lock = threading.Lock()

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        with self._cluster_lock:
            if self._cluster_client is None:
                self._cluster_client = client_from_url(self._url, **self._cluster_options)
            return self._cluster_client

    def get_many(self, keys: Any) -> dict:
        keys = list(keys)
        values = self.get_client(None).mget_nonatomic(keys)
        pairs = zip(keys, values, strict=True)
        return {k: self._serializer.loads(v) for k, v in pairs if v is not None}

    def set_many(self, data: dict, timeout: int | None) -> None:
        for key, value in data.items():
            self.set(key, value, timeout)


class ResilientRedisCache(RedisCache):
    """``RedisCache`` whose operations fall back to a miss when Redis is unavailable.

    ``LOCATION`` may name a Redis Cluster (``redis-cluster://seed,seed/0``).
    """

    def __init__(self, server: Any, params: dict) -> None:
        super().__init__(server, params)
        if isinstance(server, str) and is_cluster_url(server):
            self._servers = [server]  # its seeds are comma-separated: one URL, not many
            self._class = ClusterCacheClient

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
