"""Adaptive LIFO thread queue (resilience.request_queue, adr/0010).

The order is checked on a clock the test moves; the executor with real threads, each
wait bounded by a deadline.
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, Future
from types import SimpleNamespace

import pytest

from resilience.request_queue import AdaptiveLifoExecutor, AdaptiveLifoQueue, _Entry
from resilience.tests.clock import Clock

LIFO_AFTER_S = 0.01
EXPIRED_AFTER_S = 0.2


def queued(clock: Clock, ages: list[float]) -> AdaptiveLifoQueue:
    """A queue holding one entry per age (oldest first), named by its index."""
    queue = AdaptiveLifoQueue(
        lifo_after_s=LIFO_AFTER_S, expired_after_s=EXPIRED_AFTER_S, clock=clock
    )
    start = clock.now
    for index, age in enumerate(ages):
        clock.now = start - age
        queue.put(_Entry(0.0, Future(), print, (index,), {}))
    clock.now = start
    return queue


def taken(queue: AdaptiveLifoQueue) -> tuple[int, float, float]:
    entry, waited, age = queue.take()
    return entry.args[0], round(waited, 3), round(age, 3)


def test_a_queue_that_is_nearly_empty_is_first_in_first_out():
    queue = queued(Clock(100.0), [0.005, 0.002, 0.0])
    assert [taken(queue)[0] for _ in range(3)] == [0, 1, 2]


def test_a_standing_queue_serves_the_newest_first_and_reports_its_age():
    queue = queued(Clock(100.0), [0.15, 0.1, 0.05, 0.0])
    # The newest waited for nothing, but the queue it left is 150 ms old.
    assert taken(queue) == (3, 0.0, 0.15)
    assert taken(queue) == (2, 0.05, 0.15)


def test_the_oldest_is_taken_first_once_it_waited_past_every_standing_budget():
    # It will be shed at once: its answer must not wait for the queue to drain.
    queue = queued(Clock(100.0), [0.3, 0.25, 0.1, 0.0])
    assert taken(queue) == (0, 0.3, 0.3)
    assert taken(queue) == (1, 0.25, 0.25)
    assert taken(queue)[0] == 3  # then newest first again


def test_the_queue_refuses_thresholds_in_the_wrong_order():
    with pytest.raises(ValueError, match="lifo_after_s <= expired_after_s"):
        AdaptiveLifoQueue(lifo_after_s=0.3, expired_after_s=0.2)


def blocked_executor(threads: int):
    """An executor whose threads are all held until ``release`` is set."""
    seen: list[tuple[float | None, float | None]] = []
    queue = AdaptiveLifoQueue(lifo_after_s=0.0, expired_after_s=60.0)
    executor = AdaptiveLifoExecutor(threads, queue, on_dequeue=lambda w, a: seen.append((w, a)))
    release, holding = threading.Event(), threading.Semaphore(0)

    def hold() -> None:
        holding.release()
        assert release.wait(10), "the test never released the threads"

    holders = [executor.submit(hold) for _ in range(threads)]
    for _ in range(threads):
        assert holding.acquire(timeout=10), "a thread never took its holder"
    return executor, release, holders, seen


def test_the_executor_runs_queued_work_newest_first_once_the_queue_stands():
    executor, release, holders, seen = blocked_executor(1)
    ran: list[int] = []
    try:
        # Any wait is longer than lifo_after_s (0 here): once released, the queue stands.
        futures = [executor.submit(ran.append, i) for i in range(4)]
        release.set()
        for future in [*holders, *futures]:
            assert future.result(timeout=10) is None
    finally:
        release.set()
        executor.shutdown(wait=True)
    assert ran == [3, 2, 1, 0]
    # Every run was told its wait and the queue's age, and both cleared after.
    waits = [w for w, _ in seen if w is not None]
    assert len(waits) == 5
    assert all(w >= 0 for w in waits)
    assert seen[-1] == (None, None)


def test_the_executor_carries_results_and_exceptions_in_its_futures():
    executor = AdaptiveLifoExecutor(
        2, AdaptiveLifoQueue(lifo_after_s=0.01, expired_after_s=0.2), thread_name_prefix="t"
    )
    try:
        assert executor.submit(lambda a, b=0: a + b, 2, b=3).result(timeout=10) == 5
        failing = executor.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failing.result(timeout=10)
    finally:
        executor.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        executor.submit(print)


def test_shutdown_with_cancel_futures_cancels_what_was_still_queued():
    executor, release, holders, _ = blocked_executor(1)
    waiting = executor.submit(print, "never")
    executor.shutdown(wait=False, cancel_futures=True)
    release.set()
    with pytest.raises(CancelledError):
        waiting.result(timeout=10)
    assert holders[0].result(timeout=10) is None
    executor.shutdown(wait=True)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("enabled", "order", "lifo"),
    [(True, "adaptive_lifo", True), (True, "fifo", False), (False, "adaptive_lifo", False)],
)
def test_the_gunicorn_worker_queues_lifo_only_when_asked_and_shedding_is_on(
    settings, enabled, order, lifo
):
    from resilience import concurrency
    from resilience.gunicorn_worker import QueueTimedThreadWorker

    raw = settings.RESILIENCE_CONCURRENCY
    settings.RESILIENCE_CONCURRENCY = {
        **raw,
        "enabled": enabled,
        "standing_queue": {**raw["standing_queue"], "thread_queue": order},
    }
    concurrency.reset()
    worker = QueueTimedThreadWorker.__new__(QueueTimedThreadWorker)  # no arbiter here
    worker.cfg = SimpleNamespace(threads=2)
    pool = worker.get_thread_pool()
    try:
        cfg = concurrency.config()
        assert worker.adaptive_lifo is lifo
        assert isinstance(pool, AdaptiveLifoExecutor) is lifo
        if lifo:
            assert pool.queue.lifo_after_s == cfg.queue_empty_s
            # Past every class's standing budget a request is shed: taken oldest first.
            assert pool.queue.expired_after_s == max(cfg.standing_queue_budgets_s.values())
            assert pool.submit(concurrency.queue_age_s).result(timeout=10) >= 0
    finally:
        pool.shutdown(wait=True)
        concurrency.reset()


def test_an_unknown_thread_queue_order_fails_the_system_checks(settings):
    from resilience.checks import check_concurrency_settings

    raw = settings.RESILIENCE_CONCURRENCY
    assert check_concurrency_settings(None) == []
    settings.RESILIENCE_CONCURRENCY = {
        **raw,
        "standing_queue": {**raw["standing_queue"], "thread_queue": "random"},
    }
    errors = check_concurrency_settings(None)
    assert [e.id for e in errors] == ["resilience.E011"]
    assert "standing_queue.thread_queue must be one of" in errors[0].msg
