"""The Django PostgreSQL backend with the ``postgres`` circuit breaker built in.

Every query, commit and rollback also has a client-side read deadline (the alias's
``CLIENT_READ_TIMEOUT_S``, above its statement timeout): a network that swallows the
answer would otherwise hold the thread for minutes (``resilience.socket_deadline``).
A checkout fails at once, instead of waiting the pool timeout, while the pool has no
live connection and its last attempt to open one just failed (``reachability``).
"""

from __future__ import annotations

from typing import Any

import psycopg
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base
from psycopg_pool import ConnectionPool

from resilience import metrics, socket_deadline
from resilience.breakers import breaker
from resilience.calls import waiting_on_dependency
from resilience.db_backend.reachability import Reachability, ReachabilityPool

# Exported from 0 by every process that talks to Postgres, so rate() sees the first one.
metrics.SOCKET_DEADLINE_EXCEEDED.labels("postgres")


def _socket_of(connection: psycopg.Connection) -> int | None:
    """The connection's socket, or None when it is closed or broken (then the call fails
    on its own, at once)."""
    if connection.closed:
        return None
    try:
        return connection.pgconn.socket
    except psycopg.Error:
        return None


def _deadlined_check(deadline_s: float | None):
    def check(connection: psycopg.Connection) -> None:
        with socket_deadline.watch(_socket_of(connection), deadline_s, "postgres"):
            ConnectionPool.check_connection(connection)

    return check


def _guarded_execute(execute, sql, params, many, context):
    connection = context["connection"]
    with waiting_on_dependency(), connection.read_deadline():
        return breaker("postgres").call(execute, sql, params, many, context)


class DatabaseWrapper(base.DatabaseWrapper):
    """Connections and queries go through the breaker (when resilience is enabled)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if settings.RESILIENCE_ENABLED:
            self.execute_wrappers.append(_guarded_execute)

    @property
    def pool(self) -> ConnectionPool | None:
        """Django's pool (5.2's code), but its checkout check has a read deadline.

        psycopg_pool checks a pooled connection with an empty query before handing it
        out, on the caller's thread; Django passes the plain ``check_connection``, which
        a swallowed answer blocks for good, and takes no check of ours (it always passes
        ``check=`` itself). The check gets the pool wait as its deadline.
        """
        pool_options = self.settings_dict["OPTIONS"].get("pool")
        if not settings.RESILIENCE_ENABLED or self.alias == NO_DB_ALIAS or not pool_options:
            return super().pool
        if self.alias not in self._connection_pools:
            if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
                raise ImproperlyConfigured("Pooling doesn't support persistent connections.")
            options = {} if pool_options is True else dict(pool_options)
            connect_kwargs = self.get_connection_params()
            connect_kwargs["autocommit"] = True  # as Django: it sets the mode later on
            check = None
            if self.settings_dict["CONN_HEALTH_CHECKS"]:
                deadline_s = options.get("timeout", self.settings_dict.get("CLIENT_READ_TIMEOUT_S"))
                check = _deadlined_check(deadline_s)
            # A checkout with no connection to come would wait the pool timeout: fail
            # fast within that long after a failed attempt to open one.
            # (30 s: psycopg_pool's own default, for a pool configured without one.)
            reachability = Reachability(window_s=options.get("timeout", 30.0))
            pool = ReachabilityPool(
                kwargs=connect_kwargs,
                open=False,
                configure=self._configure_connection,
                check=check,
                reachability=reachability,
                **options,
            )
            self._connection_pools.setdefault(self.alias, pool)
        return self._connection_pools[self.alias]

    def _configure_connection(self, connection: psycopg.Connection) -> Any:
        # Run by the pool's own threads on every new connection (time zone, role).
        with self.read_deadline(connection):
            return super()._configure_connection(connection)

    def read_deadline(self, raw: psycopg.Connection | None = None):
        """Bound the next exchange on ``raw`` (default: this wrapper's connection)
        by ``CLIENT_READ_TIMEOUT_S``; nothing without a socket, or with resilience off."""
        raw = raw if raw is not None else self.connection
        fd = _socket_of(raw) if settings.RESILIENCE_ENABLED and raw is not None else None
        timeout_s = self.settings_dict.get("CLIENT_READ_TIMEOUT_S")
        return socket_deadline.watch(fd, timeout_s, "postgres")

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if not settings.RESILIENCE_ENABLED:
            return super().get_new_connection(conn_params)
        # The pool (ReachabilityPool) refuses at once, or mid-wait, while Postgres is
        # known unreachable; the breaker counts that as the failure it is.
        with waiting_on_dependency():
            return breaker("postgres").call(super().get_new_connection, conn_params)

    # COMMIT and ROLLBACK go to psycopg directly, not through the execute wrappers.
    def _commit(self) -> None:
        with waiting_on_dependency(), self.read_deadline():
            super()._commit()

    def _rollback(self) -> None:
        with waiting_on_dependency(), self.read_deadline():
            super()._rollback()
