"""Fail fast while this process has no live Postgres connection and cannot open one.

When Postgres goes away, psycopg_pool discards the dead connections and retries new
ones in the background, with backoff; meanwhile every ``getconn`` waits the whole pool
timeout (1 s) for a connection that cannot come. Until the breaker has seen enough of
those slow failures to open, each request pays that second: in ``postgres-down`` the
p99 was the pool timeout, with the breaker or without it (docs/chaos/postgres-down/).

The pool's connections are watched here (a ``connection_class`` that notes every
connect and failed connect: the pool's public hook, no private attributes). While
none is alive and the last attempt to open one failed less than ``window_s`` ago with no
success since, a checkout fails at once with ``PostgresUnreachable`` (an
``OperationalError``, so the breaker counts it and the views answer 503 as for a pool
timeout). Past the window a checkout waits as before, which lets the pool try again:
this never stops it from finding Postgres back.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

# How long a waiting checkout goes without looking at the reachability again: a tenth of
# the 1 s pool wait, so that the requests caught in an outage's first second wait that.
CHECKOUT_SLICE_S = 0.1


class PostgresUnreachable(psycopg.OperationalError):
    """No live connection, and the last attempt to open one just failed."""


class Reachability:
    """Live connections of one pool, and when an attempt to open one last failed."""

    def __init__(self, *, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        # The pool drops a connection the server broke without closing it: "alive" is
        # what is open and not broken, read when asked.
        self._connections: weakref.WeakSet[psycopg.Connection] = weakref.WeakSet()
        self.failed_at: float | None = None  # the last failed attempt, if none succeeded since
        self.last_error = ""

    @property
    def alive(self) -> int:
        with self._lock:
            return sum(1 for connection in self._connections if not connection.closed)

    def opened(self, connection: psycopg.Connection) -> None:
        with self._lock:
            self._connections.add(connection)
            self.failed_at = None

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.failed_at = self._clock()
            text = str(exc).strip()
            self.last_error = text.splitlines()[0] if text else type(exc).__name__

    def refuse_if_unreachable(self) -> None:
        """Raise ``PostgresUnreachable`` instead of letting a checkout wait for nothing."""
        with self._lock:
            failed_at, error = self.failed_at, self.last_error
        since = None if failed_at is None else self._clock() - failed_at
        if since is not None and since < self.window_s and self.alive == 0:
            raise PostgresUnreachable(
                f"postgres unreachable: no live connection and the last attempt to open one"
                f" failed {since:.2f} s ago ({error})"
            )


def counted_connection_class(reachability: Reachability) -> type[psycopg.Connection]:
    """A ``psycopg.Connection`` whose opens and failed opens ``reachability`` notes."""

    class CountedConnection(psycopg.Connection):
        @classmethod
        def connect(cls, *args: Any, **kwargs: Any) -> CountedConnection:
            try:
                connection = super().connect(*args, **kwargs)
            except psycopg.Error as exc:
                reachability.failed(exc)
                raise
            reachability.opened(connection)
            return connection

    return CountedConnection


class ReachabilityPool(ConnectionPool):
    """A pool whose waiting checkouts give up as soon as Postgres is known unreachable."""

    def __init__(self, *args: Any, reachability: Reachability, **kwargs: Any) -> None:
        self.reachability = reachability
        super().__init__(*args, connection_class=counted_connection_class(reachability), **kwargs)

    def getconn(self, timeout: float | None = None) -> Any:
        total = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + total
        while True:
            self.reachability.refuse_if_unreachable()
            remaining = deadline - time.monotonic()
            try:
                return super().getconn(timeout=max(0.001, min(CHECKOUT_SLICE_S, remaining)))
            except PoolTimeout:
                if time.monotonic() >= deadline:
                    raise
