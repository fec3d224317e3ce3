"""One way to build a Redis client from a URL: a single server or a Redis Cluster.

``redis://host:port/db`` (or ``rediss://``) is one server, as before. A Redis Cluster is
named by its seed nodes, ``redis-cluster://host1:port1,host2:port2,.../0``: redis-py's
:class:`~redis.cluster.RedisCluster` discovers the slots from any seed that answers,
follows ``MOVED``/``ASK`` and re-reads the topology after a failover. A cluster has one
database (0).

Every caller passes its own timeouts and retry (no client retry on the request path:
the fallbacks are cheaper than waiting, GOTCHAS.md); the same keyword arguments work for
both kinds. On a cluster, a multi-key command or script must keep its keys in one slot
(``{...}`` hash tags): the callers that need it say how they do it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException

CLUSTER_SCHEME = "redis-cluster"


def _as_redis_error(exc: RedisClusterException) -> redis.RedisError:
    # redis-py raises RedisClusterException (not a RedisError) when no seed answers or
    # a command's keys span slots; callers handle RedisError only (their fallbacks).
    if "same key slot" in str(exc) or "CROSSSLOT" in str(exc):
        return redis.exceptions.ResponseError(f"CROSSSLOT {exc}")
    return redis.exceptions.ConnectionError(str(exc))


class ResilientRedisCluster(RedisCluster):
    """``RedisCluster`` whose every failure is a ``RedisError``, like one server's."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise _as_redis_error(exc) from exc


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis-cluster://seed,seed/0``)."""
    return urlsplit(url).scheme == CLUSTER_SCHEME


def cluster_seeds(url: str) -> list[tuple[str, int]]:
    """The ``(host, port)`` seeds of a ``redis-cluster://`` URL."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    seeds = []
    for item in netloc.split(","):
        host, _, port = item.strip().rpartition(":")
        seeds.append((host.strip("[]") or "127.0.0.1", int(port or 6379)))
    return seeds


def _cluster(url: str, **kwargs: Any) -> RedisCluster:
    parts = urlsplit(url)
    if parts.path.strip("/") not in {"", "0"}:
        raise ValueError(f"a Redis Cluster has only database 0: {url}")
    credentials = parts.netloc.rpartition("@")[0]
    if credentials:
        user, _, password = credentials.partition(":")
        kwargs.setdefault("username", user or None)
        kwargs.setdefault("password", password or None)
    try:
        return ResilientRedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in cluster_seeds(url)],
            # After a master dies its replica takes over within the cluster's node
            # timeout; the client re-reads the slots on the next error, not every 5.
            reinitialize_steps=1,
            **kwargs,
        )
    except RedisClusterException as exc:  # no seed answered: try again on the next call
        raise _as_redis_error(exc) from exc


def client_from_url(url: str, **kwargs: Any) -> redis.Redis | RedisCluster:
    """A client for ``url``: :class:`redis.Redis` for one server, ``RedisCluster`` for a
    cluster; ``kwargs`` are the connection settings (timeouts, retry, pool size)."""
    if is_cluster_url(url):
        return _cluster(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)
