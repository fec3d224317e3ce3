"""During a chaos scenario /metrics shows the fault and the recovery.

Postgres is cut through the chaos proxy in front of a gunicorn process (as in
tests/test_postgres_breaker.py) and ``/metrics`` is read before, during and after:
the ``postgres`` breaker goes 0 -> 2 -> 0, its transitions and refusals are counted,
and ``/readyz`` says the same thing in words.
"""

from __future__ import annotations

import json
import re

import pytest
from rest_framework.authtoken.models import Token

from tests.processes import (
    GUNICORN_COMMAND,
    child_environment,
    free_port,
    http_request,
    running,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def get(url: str, token: str | None = None) -> tuple[int, str]:
    answer = http_request("GET", url, token=token)
    return answer.status, answer.text


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
    total = 0.0
    for match in re.finditer(rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$", text, re.MULTILINE):
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[1]))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match[2])
    return total


def test_metrics_show_a_postgres_cut_and_its_recovery(toxiproxy, user, tmp_path):
    from django.db import connections

    db = connections["default"].settings_dict
    proxy = toxiproxy.create_proxy("postgres", "127.0.0.1:0", f"{db['HOST']}:{db['PORT']}")
    proxy_port = int(proxy["listen"].rsplit(":", 1)[1])
    token = Token.objects.create(user=user).key
    port = free_port()
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    env = child_environment(
        WEB_PORT=str(port),
        WEB_WORKERS="1",  # one process: its breaker is the one /metrics shows
        DATABASE_URL=f"postgres://{db['USER']}@127.0.0.1:{proxy_port}/{db['NAME']}",
        POSTGRES_BREAKER_RESET_S="1",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    base = f"http://127.0.0.1:{port}"
    orders = f"{base}/api/v1/orders"
    # A page never read while Postgres was up: no stale copy, so a refusal (resilience.stale).
    unread_page = f"{orders}?page_size=9"

    def scrape() -> str:
        status, text = get(f"{base}/metrics")
        assert status == 200, "the metrics endpoint must answer while Postgres is down"
        return text

    def state() -> float:
        return sample(scrape(), "resilience_breaker_state", dependency="postgres")

    with running(GUNICORN_COMMAND, env=env, log_path=tmp_path / "web.log"):
        wait_for(lambda: get(orders, token)[0] == 200, timeout=30, what="web ready")

        before = scrape()
        assert sample(before, "resilience_breaker_state", dependency="postgres") == 0
        opened_before = sample(
            before, "resilience_breaker_transitions_total", dependency="postgres", to_state="open"
        )
        refused_before = sample(
            before, "resilience_breaker_calls_not_permitted_total", dependency="postgres"
        )

        toxiproxy.set_enabled("postgres", False)
        wait_for(
            lambda: get(unread_page, token)[0] == 503 and state() == 2,
            timeout=30,
            interval=0.05,
            what="breaker open in /metrics",
        )
        for _ in range(5):
            assert get(unread_page, token)[0] == 503
        assert get(orders, token)[0] == 200  # the page read before: served stale
        during = scrape()
        # Still in rotation (adr/0009): Redis answers, so stale reads and fast 503s do.
        ready_status, ready_body = get(f"{base}/readyz")
        assert ready_status == 200
        assert json.loads(ready_body)["status"] == "degraded"
        assert "postgres" in json.loads(ready_body)["degraded"]
        assert json.loads(ready_body)["breakers"]["postgres"]["state"] in {"open", "half-open"}

        toxiproxy.set_enabled("postgres", True)
        wait_for(
            lambda: get(orders, token)[0] == 200 and state() == 0,
            timeout=30,
            interval=0.1,
            what="breaker closed in /metrics",
        )
        after = scrape()
        assert json.loads(get(f"{base}/readyz")[1])["breakers"]["postgres"]["state"] == "closed"

    assert (
        sample(
            during, "resilience_breaker_transitions_total", dependency="postgres", to_state="open"
        )
        > opened_before
    )
    assert (
        sample(during, "resilience_breaker_calls_not_permitted_total", dependency="postgres")
        >= refused_before + 5
    )
    assert sample(during, "resilience_breaker_failures_total", dependency="postgres") > 0
    assert (
        sample(during, "django_http_responses_total_by_status_view_method_total", status="503") >= 5
    )
    # Closed by the recovery probe (open -> closed), not by a user request as the trial.
    assert (
        sample(
            after,
            "resilience_breaker_transitions_total",
            dependency="postgres",
            from_state="open",
            to_state="closed",
        )
        >= 1
    )
    assert (
        sample(after, "resilience_breaker_probes_total", dependency="postgres", outcome="ok") >= 1
    )
