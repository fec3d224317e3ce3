"""PostgreSQL backend whose connections and queries pass through the ``postgres`` breaker.

Set ``ENGINE = "resilience.db_backend"``. While the breaker is open, getting a
connection and running a query both fail at once with ``BreakerOpenError``, without
touching the socket or waiting for the pool: the API answers 503 in milliseconds.
"""
