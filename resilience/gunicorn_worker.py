"""gunicorn's gthread worker, with an adaptive LIFO thread queue that measures each wait.

Under overload, accepted requests queue in the worker's thread pool before Django sees
them. This worker swaps gunicorn's FIFO ``ThreadPoolExecutor`` for
``resilience.request_queue.AdaptiveLifoExecutor`` (newest first once the queue stands,
the expired oldest first so that they are shed at once: adr/0010) and, when a thread
takes a request, records its wait and the queue's age for ``resilience.concurrency``
(queue-time shedding), so a request that already waited past its class's budget is shed
at once instead of served late. A gateway's ``X-Request-Start`` header, when present,
takes precedence for the request's own wait (it also counts the socket backlog).
Selected in ``config/gunicorn.py`` (``worker_class``). With load shedding off (the
baseline, ``CONCURRENCY_LIMIT_ENABLED=false``) the queue is gunicorn's FIFO one.
"""

from __future__ import annotations

from gunicorn.workers.gthread import ThreadWorker

from resilience import concurrency
from resilience.request_queue import AdaptiveLifoExecutor, AdaptiveLifoQueue


class QueueTimedThreadWorker(ThreadWorker):
    def get_thread_pool(self):
        cfg = concurrency.config()
        queue = AdaptiveLifoQueue(
            order=cfg.thread_queue if cfg.enabled else "fifo",
            lifo_after_s=cfg.queue_empty_s,
            expired_after_s=max(cfg.standing_queue_budgets_s.values()),
        )
        return AdaptiveLifoExecutor(self.cfg.threads, queue, on_dequeue=concurrency.set_queue_wait)
