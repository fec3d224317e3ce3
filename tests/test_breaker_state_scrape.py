"""``resilience_breaker_state`` of a shared breaker is read from Redis at scrape time.

A process that saw a breaker open and then made no call must not keep reporting it
open after the fleet closed it (issue: the gauge kept CircuitBreakerStuckOpen firing).
"""

from __future__ import annotations

import re

import pytest
from prometheus_client import generate_latest

from common.metrics_export import scrape_registry
from resilience import metrics
from resilience.breakers import breaker
from tests.processes import (
    GUNICORN_COMMAND,
    child_environment,
    free_port,
    http_request,
    running,
    wait_for,
)


def state_in(text: str, dependency: str) -> float | None:
    match = re.search(
        rf'^resilience_breaker_state\{{dependency="{re.escape(dependency)}"\}} (\S+)$',
        text,
        re.MULTILINE,
    )
    return float(match.group(1)) if match else None


def no_probes(settings) -> None:
    probes = {**settings.RESILIENCE["probes"], "enabled": False}
    settings.RESILIENCE = {**settings.RESILIENCE, "probes": probes}


def test_the_scrape_reports_the_shared_state_not_this_process_last_view(settings):
    no_probes(settings)
    cb = breaker("payments")
    cb.open()
    page = generate_latest(scrape_registry()).decode()
    assert state_in(page, "payments") == 2
    cb.close()  # as another process would, in Redis
    metrics.BREAKER_STATE.labels("payments").set(2)  # this process still "saw it open"
    page = generate_latest(scrape_registry()).decode()
    assert state_in(page, "payments") == 0
    # A process-local breaker keeps its own value.
    metrics.BREAKER_STATE.labels("redis").set(2)
    assert state_in(generate_latest(scrape_registry()).decode(), "redis") == 2
    metrics.BREAKER_STATE.labels("redis").set(0)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_gunicorn_workers_that_saw_it_open_report_it_closed_once_closed(settings, tmp_path):
    """Two workers build the payments breaker open at start, never call payments again."""
    no_probes(settings)
    breaker("payments").open()
    port = free_port()
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    env = child_environment(
        WEB_PORT=str(port),
        WEB_WORKERS="2",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        BREAKER_PROBES_ENABLED="false",
    )
    url = f"http://127.0.0.1:{port}/metrics"
    with running(GUNICORN_COMMAND, env=env, log_path=tmp_path / "web.log"):
        wait_for(
            lambda: len(list(metrics_dir.glob("gauge_livemax_*.db"))) >= 2,
            timeout=60,
            what="both workers initialised",
        )
        opened = wait_for(lambda: http_request("GET", url).text, timeout=30, what="a scrape")
        assert state_in(opened, "payments") == 2
        breaker("payments").close()  # the fleet closes it; no worker calls payments
        closed = http_request("GET", url)
    assert closed.status == 200
    assert state_in(closed.text, "payments") == 0
