"""Which database errors mean "Postgres is unavailable" (and so count for its breaker)."""

from __future__ import annotations

import psycopg
from django.db import Error as DjangoDatabaseError


def is_connection_failure(exc: BaseException) -> bool:
    """Connection-level failures and timeouts count; business and contention errors do not.

    Counted: cannot connect, pool wait timeout, connection lost, statement timeout,
    server shutting down. Not counted: integrity, data and programming errors (the
    request's fault), lock timeouts and serialisation failures (contention on one row,
    not an outage).
    """
    cause = exc.__cause__ if isinstance(exc, DjangoDatabaseError) and exc.__cause__ else exc
    if isinstance(cause, psycopg.errors.LockNotAvailable | psycopg.errors.TransactionRollback):
        return False
    return isinstance(cause, psycopg.OperationalError | psycopg.InterfaceError)


def release_idle_connections() -> None:
    """Give this thread's pooled connections back before it waits on another dependency.

    A thread that waits on payments for its request budget must not keep a Postgres
    connection the other threads need (adr/0007). Outside a transaction a pooled
    connection goes back to its pool, and the next query checks one out again (tens of
    microseconds); inside one, or without a pool, nothing changes.
    """
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        if (
            connection.connection is not None
            and not connection.in_atomic_block
            and getattr(connection, "pool", None) is not None
        ):
            connection.close()
