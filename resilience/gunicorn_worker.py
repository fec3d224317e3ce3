"""gunicorn's gthread worker, measuring how long each request waited for a thread.

Under overload, accepted requests queue in the worker's thread pool before Django sees
them. This worker stamps a connection when it is queued and, when a thread picks it up,
records the wait for ``resilience.concurrency`` (queue-time shedding), so a request
that already waited past its class's budget is shed at once instead of served late.
A gateway's ``X-Request-Start`` header, when present, takes precedence (it also counts
the socket backlog). Selected in ``config/gunicorn.py`` (``worker_class``).
"""

from __future__ import annotations

import time

from gunicorn.workers.gthread import ThreadWorker

from resilience.concurrency import set_queue_wait


class QueueTimedThreadWorker(ThreadWorker):
    def enqueue_req(self, conn) -> None:
        conn.resilience_enqueued_at = time.monotonic()
        super().enqueue_req(conn)

    def handle(self, conn):
        enqueued = getattr(conn, "resilience_enqueued_at", None)
        set_queue_wait(None if enqueued is None else time.monotonic() - enqueued)
        try:
            return super().handle(conn)
        finally:
            set_queue_wait(None)
