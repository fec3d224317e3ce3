"""/metrics under gunicorn with several worker processes adds up every worker's counts."""

from __future__ import annotations

import re
import sys
import urllib.request

import pytest

from tests.processes import child_environment, free_port, running, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback URL
            return response.status, response.read().decode()
    except OSError:
        return 0, ""


def test_metrics_aggregate_across_gunicorn_workers(tmp_path):
    port = free_port()
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    env = child_environment(
        WEB_PORT=str(port),
        WEB_WORKERS="3",
        WEB_THREADS="2",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "config.wsgi:application",
        "-c",
        "config/gunicorn.py",
    ]
    base = f"http://127.0.0.1:{port}"
    with running(command, env=env, log_path=tmp_path / "web.log"):
        wait_for(lambda: get(f"{base}/healthz")[0] == 200, timeout=30, what="gunicorn ready")
        requests_made = 60
        for _ in range(requests_made):
            assert get(f"{base}/healthz")[0] == 200
        status, text = get(f"{base}/metrics")
        pids = {p.name.split("_")[-1] for p in metrics_dir.iterdir()}
    assert status == 200
    # Several workers served and wrote their own files...
    assert len(pids) >= 2, pids
    # ...and /metrics sums them: every healthz request above is counted once.
    total = sum(
        float(value)
        for value in re.findall(
            r"^django_http_responses_total_by_status_view_method_total"
            r'\{[^}]*view="healthz"[^}]*\} (\S+)$',
            text,
            re.MULTILINE,
        )
    )
    assert total >= requests_made + 1  # plus the readiness polls
