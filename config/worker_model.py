"""How many requests and tasks each process runs at once: one place for these numbers.

Read by gunicorn (``config/gunicorn.py``), by the settings (the bulkhead sizing check
compares every semaphore bulkhead with the concurrency of the process that holds it)
and by the chaos harness (capacity = web processes x threads / dependency latency).
No Django import: gunicorn's master reads this before any app is loaded. Why these
values: adr/0007.
"""

from __future__ import annotations

import os


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not a whole number") from exc
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return value


# gunicorn gthread: processes per web node, and threads per process. Requests mostly
# wait on Postgres, Redis and payments, so a process serves many at once.
WEB_WORKERS = _int("WEB_WORKERS", 2)
WEB_THREADS = _int("WEB_THREADS", 16)
# Celery prefork children per worker node: each child runs one task at a time.
WORKER_DEFAULT_CONCURRENCY = _int("WORKER_DEFAULT_CONCURRENCY", 2)
WORKER_WEBHOOKS_CONCURRENCY = _int("WORKER_WEBHOOKS_CONCURRENCY", 4)
