"""/metrics under gunicorn with several worker processes adds up every worker's counts."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.processes import (
    GUNICORN_COMMAND,
    child_environment,
    free_port,
    http_request,
    running,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def get(url: str) -> tuple[int, str]:
    answer = http_request("GET", url, timeout=5)
    return answer.status, answer.text


def test_metrics_aggregate_across_gunicorn_workers(tmp_path):
    port = free_port()
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    env = child_environment(
        WEB_PORT=str(port),
        WEB_WORKERS="3",
        # Few threads so that a burst spreads over the workers; the payments bulkhead is
        # shrunk with them, or the sizing check would refuse to start (adr/0007).
        WEB_THREADS="4",
        PAYMENTS_BULKHEAD_MAX="2",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    command = GUNICORN_COMMAND
    base = f"http://127.0.0.1:{port}"
    made = 0

    def burst() -> bool:
        """Nine concurrent clients against four-thread workers spread over the workers."""
        nonlocal made
        with ThreadPoolExecutor(max_workers=9) as pool:
            statuses = list(pool.map(lambda _: get(f"{base}/healthz")[0], range(45)))
        assert statuses == [200] * 45
        made += 45
        return len(list(metrics_dir.glob("counter_*.db"))) >= 2

    with running(command, env=env, log_path=tmp_path / "web.log"):
        wait_for(lambda: get(f"{base}/healthz")[0] == 200, timeout=30, what="gunicorn ready")
        made += 1
        wait_for(burst, timeout=60, interval=0, what="several workers serving")
        status, text = get(f"{base}/metrics")
    assert status == 200
    # /metrics sums every worker's file: each healthz request above is counted once
    # (plus any readiness poll that failed before the server was up: none counted).
    total = sum(
        float(value)
        for value in re.findall(
            r"^django_http_responses_total_by_status_view_method_total"
            r'\{[^}]*view="healthz"[^}]*\} (\S+)$',
            text,
            re.MULTILINE,
        )
    )
    assert total == made


@pytest.mark.parametrize(("setting", "frozen"), [("true", True), ("false", False)])
def test_a_worker_freezes_what_start_up_allocated(monkeypatch, setting, frozen):
    """Start-up objects out of the collector's reach: full collections stop walking them
    (adr/0007: 95 to 265 ms pauses in postgres-down before, 11 to 62 ms after)."""
    import gc

    from config import gunicorn as gunicorn_config

    monkeypatch.setenv("WEB_GC_FREEZE", setting)
    gc.unfreeze()
    try:
        gunicorn_config.post_worker_init(worker=None)
        assert (gc.get_freeze_count() > 0) is frozen
    finally:
        gc.unfreeze()  # the test process must not keep a frozen heap
