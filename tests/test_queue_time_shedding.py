"""Queue-time shedding in a real gunicorn: a request that waited for a thread too long.

All four threads of one gthread process are held by slow requests; a fifth request
queues in the worker's thread pool. When a thread takes it, it has already waited past
its class's budget, so it is shed at once (503 ``overloaded``, reason ``queue_time``)
instead of being served late (resilience.gunicorn_worker, adr/0010).
"""

from __future__ import annotations

import threading
import time

import pytest

from chaos.commands import GUNICORN_COMMAND
from tests.processes import child_environment, free_port, http_request, running, wait_for

SLOW_S = 1.5


def in_flight(metrics_dir) -> float:
    """Requests admitted by the limiter now, read from the server's multiprocess files."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    return registry.get_sample_value("resilience_concurrency_in_flight") or 0.0


def hold_threads(base: str, metrics_dir, seconds: list[float]) -> list[threading.Thread]:
    """One slow request per entry, each holding a thread that long; back once all are
    admitted (the limiter's in-flight gauge says so)."""
    holders = [
        threading.Thread(
            target=http_request,
            args=("GET", f"{base}/bench/slow?seconds={held}"),
            kwargs={"timeout": 10},
        )
        for held in seconds
    ]
    for holder in holders:
        holder.start()
    wait_for(
        lambda: in_flight(metrics_dir) == len(seconds),
        timeout=10,
        what=f"{len(seconds)} threads held",
    )
    return holders


def one_process(tmp_path, port: int, *, threads: int, **overrides: str) -> dict[str, str]:
    """One gthread process of ``threads`` threads, a static limit of the threads (the
    limit is not under test here), no rate limits, metrics in ``tmp_path``."""
    return child_environment(
        DJANGO_SETTINGS_MODULE="bench.worker_model_settings",  # the product + a slow view
        WEB_PORT=str(port),
        WEB_WORKERS="1",
        WEB_THREADS=str(threads),
        PAYMENTS_BULKHEAD_MAX=str(threads // 2),  # the sizing check's rule
        RATELIMIT_ENABLED="false",
        CONCURRENCY_LIMIT_MODE="static",
        CONCURRENCY_STATIC_LIMIT=str(threads),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
        **overrides,
    )


def test_a_request_queued_past_its_budget_is_shed_when_a_thread_takes_it(tmp_path):
    port = free_port()
    env = one_process(tmp_path, port, threads=4, CONCURRENCY_LIMIT_ENABLED="true")
    base = f"http://127.0.0.1:{port}"
    with running(GUNICORN_COMMAND, env=env, log_path=tmp_path / "web.log"):
        wait_for(lambda: http_request("GET", f"{base}/healthz").status == 200, timeout=30)
        holders = hold_threads(base, tmp_path, [SLOW_S] * 4)
        started = time.monotonic()
        queued = http_request("GET", f"{base}/api/v1/orders", timeout=10)
        waited = time.monotonic() - started
        for holder in holders:
            holder.join(10)
    assert queued.status == 503, queued.text
    body = queued.json()
    assert (body["code"], body["reason"]) == ("overloaded", "queue_time")
    assert body["priority"] == "normal"
    assert waited >= 0.5  # it did wait for a thread: the budget of the normal class


@pytest.mark.parametrize(("order", "served_first"), [("adaptive_lifo", "CBA"), ("fifo", "ABC")])
def test_a_standing_thread_queue_serves_the_newest_first(tmp_path, order, served_first):
    """Two threads: one held 1.6 s, one 4 s. A, B, C queue 0.2 s apart behind them; when
    the first thread frees, adaptive LIFO serves C, then B, then A (gunicorn's FIFO: A, B,
    C), all before the second thread frees. (With 0.8 s, 2 s and 0.1 s, a busy CI host
    once let C arrive after the first thread had freed: "BAC".) The budgets are long here
    so that nothing in the queue has expired (the oldest-first rule for what will be shed
    is unit-tested)."""
    port = free_port()
    env = one_process(
        tmp_path,
        port,
        threads=2,
        CONCURRENCY_MIN_LIMIT="1",
        CONCURRENCY_THREAD_QUEUE=order,
        CONCURRENCY_CRITICAL_QUEUE_S="5",
        CONCURRENCY_CRITICAL_STANDING_QUEUE_S="5",
    )
    base = f"http://127.0.0.1:{port}"
    answered: list[str] = []
    lock = threading.Lock()

    def probe(name: str) -> None:
        # /healthz is exempt from shedding, but it queues for a thread like any request.
        answer = http_request("GET", f"{base}/healthz", timeout=10)
        with lock:
            answered.append(name if answer.status == 200 else f"{name}:{answer.status}")

    with running(GUNICORN_COMMAND, env=env, log_path=tmp_path / "web.log"):
        wait_for(lambda: http_request("GET", f"{base}/healthz").status == 200, timeout=30)
        holders = hold_threads(base, tmp_path, [1.6, 4.0])
        probes = [threading.Thread(target=probe, args=(name,)) for name in "ABC"]
        spacing = threading.Event()  # never set: its wait is the gap between arrivals
        for thread in probes:
            thread.start()
            spacing.wait(0.2)
        for thread in [*probes, *holders]:
            thread.join(10)
    assert "".join(answered) == served_first
