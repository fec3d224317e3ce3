"""Prometheus metrics from Celery workers: task counts and durations, served per worker.

A prefork worker is one main process and N pool processes, and tasks (and every
resilience metric they touch) run in the pool processes, so the worker uses
prometheus_client's multiprocess mode like gunicorn does (GOTCHAS):

* ``PROMETHEUS_MULTIPROC_DIR`` is set by the start script, one directory per worker
  (two workers sharing one would add up each other's files and wipe them at start);
* the directory is wiped at ``celeryd_init``, before the pool starts, so files of a
  previous run's pids do not add up with ours;
* a pool process that exits marks itself dead (``worker_process_shutdown``), which drops
  its ``live*`` gauges;
* the main process serves every file of the directory on ``WORKER_METRICS_PORT``
  (``worker_init``: before the broker connection, so a worker that cannot reach Redis
  can still be scraped and show it).

Without ``PROMETHEUS_MULTIPROC_DIR`` (``--pool threads``/``solo``, or a test worker) the
process's own registry is served. ``WORKER_METRICS_PORT=0`` turns serving off.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from celery import signals
from django.core.exceptions import ImproperlyConfigured
from prometheus_client import (
    Counter,
    Histogram,
    multiprocess,
    start_http_server,
)

logger = logging.getLogger(__name__)

DEFAULT_PORT = 9101
TASKS = Counter(
    "celery_tasks_total",
    "Task runs finished in this worker, by task name and outcome "
    "(success, failure, retry, ignored, rejected).",
    ["task", "outcome"],
)
TASK_SECONDS = Histogram(
    "celery_task_duration_seconds",
    "Wall-clock duration of one task run, by task name.",
    ["task"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)

_started: dict[str, float] = {}


def metrics_port() -> int:
    """``WORKER_METRICS_PORT`` (default 9101), 0 meaning "do not serve"."""
    raw = os.environ.get("WORKER_METRICS_PORT", str(DEFAULT_PORT))
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:  # the TCP port range
        raise ImproperlyConfigured(f"WORKER_METRICS_PORT must be a port number, not {raw!r}")
    return port


def _multiproc_dir() -> Path | None:
    raw = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(raw) if raw else None


def wipe_multiproc_dir(**_: Any) -> None:
    """``celeryd_init``: delete metric files of earlier pids (ours, if any, stay open)."""
    directory = _multiproc_dir()
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    own = f"_{os.getpid()}.db"
    for path in directory.glob("*.db"):
        if not path.name.endswith(own):
            path.unlink(missing_ok=True)


def serve_metrics(**_: Any) -> None:
    """``worker_init``: serve this worker's metrics over HTTP from the main process."""
    multiproc = _multiproc_dir() is not None
    if not multiproc:
        start_pool_process()  # solo/threads pools serve calls from this very process
    port = metrics_port()
    if not port:
        return
    from common.metrics_export import scrape_registry

    registry = scrape_registry()  # shared breaker state read at each scrape
    host = os.environ.get("WORKER_METRICS_HOST", "127.0.0.1")
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        # A port clash must not stop the worker from doing its job; the scrape target
        # goes down instead, which is what the operator will see and alert on.
        logger.warning(
            "worker metrics not served", extra={"port": port, "error": type(exc).__name__}
        )
        return
    logger.info("worker metrics served", extra={"host": host, "port": port})


def start_pool_process(**_: Any) -> None:
    """``worker_process_init``: create this pool process's zero series."""
    from common.metrics_bootstrap import preinitialise

    preinitialise()


def mark_pool_process_dead(pid: int | None = None, **_: Any) -> None:
    """``worker_process_shutdown``: drop the exiting pool process's live gauges."""
    if _multiproc_dir() is not None:
        multiprocess.mark_process_dead(pid or os.getpid())


def task_started(task_id: str | None = None, **_: Any) -> None:
    """``task_prerun``: remember when the run began."""
    if task_id:
        _started[task_id] = time.perf_counter()


def task_finished(
    task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any
) -> None:
    """``task_postrun``: count the run by outcome and observe its duration."""
    started = _started.pop(task_id, None) if task_id else None
    name = getattr(task, "name", None) or "unknown"
    TASKS.labels(name, (state or "unknown").lower()).inc()
    if started is not None:
        TASK_SECONDS.labels(name).observe(time.perf_counter() - started)


def install() -> None:
    """Connect the handlers (strong references: they are module functions anyway)."""
    signals.celeryd_init.connect(wipe_multiproc_dir, weak=False)
    signals.worker_init.connect(serve_metrics, weak=False)
    signals.worker_process_init.connect(start_pool_process, weak=False)
    signals.worker_process_shutdown.connect(mark_pool_process_dead, weak=False)
    signals.task_prerun.connect(task_started, weak=False)
    signals.task_postrun.connect(task_finished, weak=False)
