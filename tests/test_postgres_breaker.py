"""Postgres unreachable: the breaker opens, the API answers 503 fast, and recovers alone.

Postgres is cut through the chaos proxy (never by stopping the shared server): a
gunicorn process reaches the test database only through it.
"""

from __future__ import annotations

import statistics
import time
import uuid

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


def get(url: str, token: str) -> tuple[int, dict[str, str], float]:
    answer = http_request("GET", url, token=token)
    return answer.status, answer.headers, answer.elapsed_s


def test_postgres_cut_gives_fast_503_then_recovers(toxiproxy, user, tmp_path, capsys):
    from django.db import connections

    db = connections["default"].settings_dict
    proxy = toxiproxy.create_proxy("postgres", "127.0.0.1:0", f"{db['HOST']}:{db['PORT']}")
    proxy_port = int(proxy["listen"].rsplit(":", 1)[1])
    token = Token.objects.create(user=user).key
    port = free_port()
    env = child_environment(
        WEB_PORT=str(port),
        WEB_WORKERS="1",
        DATABASE_URL=f"postgres://{db['USER']}@127.0.0.1:{proxy_port}/{db['NAME']}",
        POSTGRES_BREAKER_RESET_S="1",
    )
    # The order detail of an order never read: no stale copy (resilience.stale) to answer.
    url = f"http://127.0.0.1:{port}/api/v1/orders/{uuid.uuid4()}"
    command = GUNICORN_COMMAND
    with running(command, env=env, log_path=tmp_path / "web.log"):
        wait_for(lambda: get(url, token)[0] == 404, timeout=30, what="web ready")

        toxiproxy.set_enabled("postgres", False)
        # Until the breaker opens, requests wait for the pool (its short timeout) and fail.
        wait_for(
            lambda: get(url, token)[0] == 503 and get(url, token)[2] < 0.05,
            timeout=30,
            interval=0.01,
            what="breaker open",
        )
        answers = [get(url, token) for _ in range(20)]
        statuses = {status for status, _, _ in answers}
        latencies = [elapsed for _, _, elapsed in answers]
        p50 = statistics.median(latencies)
        assert statuses == {503}
        assert all(int(headers["Retry-After"]) >= 1 for _, headers, _ in answers)
        assert all(
            headers["Content-Type"] == "application/problem+json" for _, headers, _ in answers
        )
        assert p50 < 0.05, f"open breaker answered in {p50 * 1000:.1f} ms"

        toxiproxy.set_enabled("postgres", True)
        cut_healed = time.perf_counter()
        wait_for(lambda: get(url, token)[0] == 404, timeout=30, interval=0.1, what="recovery")
        recovered_in = time.perf_counter() - cut_healed
    with capsys.disabled():
        print(
            f"\npostgres cut: 503 p50 {p50 * 1000:.1f} ms while open;"
            f" recovered {recovered_in:.1f} s after heal"
        )
