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
