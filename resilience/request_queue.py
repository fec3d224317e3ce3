"""Adaptive LIFO for the web process's thread queue (Facebook's "Fail at Scale", adr/0010).

Under overload, accepted connections wait in gunicorn's thread pool for a thread. A FIFO
queue then serves every request after the whole queue ahead of it: once the queue
stands, *every* served request is late, and the queue-time budget sheds nearly all of
them (docs/chaos/overload before this: 8,317 of 9,004 refusals were queue time, critical
p99 736 ms). Facebook's answer is adaptive LIFO: while the queue drains, first in first
out; once it stands, newest first, so the requests served are the ones whose clients
are still waiting, and the oldest are shed. Measured here, it did no better than FIFO
(four interleaved bench pairs, adr/0010), so it is a switch
(``CONCURRENCY_THREAD_QUEUE=adaptive_lifo``), not the default.

This queue takes, for a free thread:

* the **oldest** request, while the oldest waited less than ``lifo_after_s`` (the queue
  is nearly empty: a queue that short is fair and costs nobody anything);
* the **oldest** too once it waited longer than ``expired_after_s``, every class's
  standing budget: it will be shed at once, which is cheap, and must not wait for the
  queue to drain to get its answer;
* otherwise the **newest**: served soon after it arrived.

Each request's wait and the age of the queue when a thread took it (the oldest wait
then) go to ``on_dequeue``, in the thread that runs it: the request's own wait is
compared with its class's budget; the queue's age says whether the queue stands (with
LIFO, the newest request's own wait says nothing about it).

Why our own executor: ``concurrent.futures.ThreadPoolExecutor`` has one FIFO queue and
no hook to choose the next item (only private attributes), and gunicorn's gthread worker
offers ``get_thread_pool`` to swap in any executor that returns real futures.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

# CONCURRENCY_THREAD_QUEUE: "fifo" is gunicorn's own pool, "adaptive_lifo" this one.
ORDERS = ("adaptive_lifo", "fifo")


@dataclass
class _Entry:
    enqueued_at: float
    future: Future
    fn: Callable[..., Any]
    args: tuple
    kwargs: dict


class AdaptiveLifoQueue:
    """Entries in arrival order; ``take`` picks the oldest or the newest by the queue's age."""

    def __init__(
        self,
        *,
        lifo_after_s: float,
        expired_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= lifo_after_s <= expired_after_s:
            raise ValueError("the queue needs 0 <= lifo_after_s <= expired_after_s")
        self.lifo_after_s = lifo_after_s
        self.expired_after_s = expired_after_s
        self._clock = clock
        self._entries: deque[_Entry] = deque()
        self._ready = threading.Condition()
        self._closed = False

    def put(self, entry: _Entry) -> None:
        with self._ready:
            if self._closed:
                raise RuntimeError("cannot queue work after shutdown")
            entry.enqueued_at = self._clock()
            self._entries.append(entry)
            self._ready.notify()

    def take(self) -> tuple[_Entry, float, float] | None:
        """The next entry, its wait and the queue's age; None once closed and empty."""
        with self._ready:
            while not self._entries:
                if self._closed:
                    return None
                self._ready.wait()
            now = self._clock()
            age = now - self._entries[0].enqueued_at
            newest_first = self.lifo_after_s < age <= self.expired_after_s
            entry = self._entries.pop() if newest_first else self._entries.popleft()
            return entry, now - entry.enqueued_at, age

    def close(self, *, cancel: bool) -> list[_Entry]:
        """No more puts; with ``cancel``, hand back what was still queued."""
        with self._ready:
            self._closed = True
            dropped = list(self._entries) if cancel else []
            if cancel:
                self._entries.clear()
            self._ready.notify_all()
            return dropped


class AdaptiveLifoExecutor(Executor):
    """A fixed pool of threads that run what ``AdaptiveLifoQueue`` hands them."""

    def __init__(
        self,
        max_workers: int,
        queue: AdaptiveLifoQueue,
        *,
        on_dequeue: Callable[[float | None, float | None], None] | None = None,
        thread_name_prefix: str = "request",
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.queue = queue
        self._on_dequeue = on_dequeue
        self._threads = [
            threading.Thread(target=self._work, name=f"{thread_name_prefix}-{i}", daemon=True)
            for i in range(max_workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        self.queue.put(_Entry(0.0, future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        for entry in self.queue.close(cancel=cancel_futures):
            entry.future.cancel()
        if wait:
            for thread in self._threads:
                thread.join()

    def _work(self) -> None:
        while (taken := self.queue.take()) is not None:
            entry, waited, age = taken
            if not entry.future.set_running_or_notify_cancel():
                continue
            if self._on_dequeue is not None:
                self._on_dequeue(waited, age)
            try:
                result = entry.fn(*entry.args, **entry.kwargs)
            except BaseException as exc:  # noqa: BLE001 - the future carries it, as ThreadPoolExecutor's
                entry.future.set_exception(exc)
            else:
                entry.future.set_result(result)
            finally:
                if self._on_dequeue is not None:
                    self._on_dequeue(None, None)
                del entry
