"""The Django PostgreSQL backend with the ``postgres`` circuit breaker built in."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.backends.postgresql import base

from resilience.breakers import breaker


def _guarded_execute(execute, sql, params, many, context):
    return breaker("postgres").call(execute, sql, params, many, context)


class DatabaseWrapper(base.DatabaseWrapper):
    """Connections and queries go through the breaker (when resilience is enabled)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if settings.RESILIENCE_ENABLED:
            self.execute_wrappers.append(_guarded_execute)

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if not settings.RESILIENCE_ENABLED:
            return super().get_new_connection(conn_params)
        return breaker("postgres").call(super().get_new_connection, conn_params)
