"""gunicorn's gthread worker, measuring how long each request waited for a thread.

Under overload, accepted requests queue in the worker's thread pool before Django sees
them. This worker records, when a thread takes a request, its wait and the queue's age
(the oldest wait then) for ``resilience.concurrency`` (queue-time shedding), so a
request that already waited past its class's budget is shed at once instead of served
late. A gateway's ``X-Request-Start`` header, when present, takes precedence for the
request's own wait (it also counts the socket backlog). Selected in
``config/gunicorn.py`` (``worker_class``).

The queue is gunicorn's own FIFO ``ThreadPoolExecutor`` as shipped (its head is the
oldest request, so its wait is the queue's age). ``CONCURRENCY_THREAD_QUEUE=adaptive_lifo``
swaps in ``resilience.request_queue.AdaptiveLifoExecutor`` (newest first once the queue
stands), kept for comparison: adr/0010 says why it is not the default.
"""

from __future__ import annotations

import time

from gunicorn.workers.gthread import ThreadWorker

from resilience import concurrency
from resilience.request_queue import AdaptiveLifoExecutor, AdaptiveLifoQueue


class QueueTimedThreadWorker(ThreadWorker):
    adaptive_lifo = False

    def get_thread_pool(self):
        cfg = concurrency.config()
        self.adaptive_lifo = cfg.enabled and cfg.thread_queue == "adaptive_lifo"
        if not self.adaptive_lifo:
            return super().get_thread_pool()
        queue = AdaptiveLifoQueue(
            lifo_after_s=cfg.queue_empty_s,
            expired_after_s=max(cfg.standing_queue_budgets_s.values()),
        )
        return AdaptiveLifoExecutor(self.cfg.threads, queue, on_dequeue=concurrency.set_queue_wait)

    def enqueue_req(self, conn) -> None:
        conn.resilience_enqueued_at = time.monotonic()
        super().enqueue_req(conn)

    def handle(self, conn):
        if self.adaptive_lifo:  # the executor reports the wait and the age itself
            return super().handle(conn)
        enqueued = getattr(conn, "resilience_enqueued_at", None)
        waited = None if enqueued is None else time.monotonic() - enqueued
        concurrency.set_queue_wait(waited, waited)  # FIFO: the one taken is the oldest
        try:
            return super().handle(conn)
        finally:
            concurrency.set_queue_wait(None)
