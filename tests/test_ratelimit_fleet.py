"""Two gunicorn processes sharing Redis enforce one fleet-wide limit within 2%.

Concurrent clients hammer both servers for a fixed time; the flood bucket (capacity C,
refill R per second) must admit C + R x seconds requests in total, whichever server
they reached. Both servers read time from Redis, so their hosts' clocks do not matter.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import threading
import time
import uuid
from contextlib import ExitStack

import pytest
from django.core.management import CommandError, call_command

from tests.processes import (
    GUNICORN_COMMAND,
    child_environment,
    free_port,
    http_request,
    running,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CAPACITY = 100
RATE = 100.0
DURATION_S = 3.0
CLIENTS = 8
TOLERANCE = 0.02


def get(url: str) -> tuple[int, str]:
    answer = http_request("GET", url, timeout=5)
    return answer.status, answer.text


def hammer(port: int, deadline: float, results: list, lock: threading.Lock) -> None:
    """Send requests on one keep-alive connection until ``deadline``; record each answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    local = []
    try:
        while time.monotonic() < deadline:
            sent = time.monotonic()
            connection.request("GET", "/api/v1/auth/me")
            response = connection.getresponse()
            response.read()
            local.append((sent, response.status))
    finally:
        connection.close()
        with lock:
            results.extend(local)


def test_two_web_processes_share_one_limit_within_two_percent(tmp_path):
    ports = [free_port(), free_port()]
    overrides = {"flood": {"capacity": CAPACITY, "refill_rate": RATE}}
    prefix = f"fleet-{uuid.uuid4().hex}"  # both servers share these buckets, no one else
    command = GUNICORN_COMMAND
    with ExitStack() as stack:
        for index, port in enumerate(ports):
            metrics_dir = tmp_path / f"prom{index}"
            metrics_dir.mkdir()
            env = child_environment(
                WEB_PORT=str(port),
                WEB_WORKERS="1",
                PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
                RATELIMIT_KEY_PREFIX=prefix,
                RATELIMIT_POLICY_OVERRIDES=json.dumps(overrides),
            )
            stack.enter_context(running(command, env=env, log_path=tmp_path / f"web{index}.log"))
        for port in ports:
            wait_for(
                lambda port=port: get(f"http://127.0.0.1:{port}/healthz")[0] == 200,
                timeout=30,
                what=f"gunicorn on {port}",
            )

        results: list[tuple[float, int]] = []
        lock = threading.Lock()
        deadline = time.monotonic() + DURATION_S
        threads = [
            threading.Thread(target=hammer, args=(ports[i % 2], deadline, results, lock))
            for i in range(CLIENTS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=DURATION_S + 30)
        assert not any(t.is_alive() for t in threads)

        metrics = [get(f"http://127.0.0.1:{port}/metrics")[1] for port in ports]

    statuses = [status for _, status in results]
    assert set(statuses) <= {401, 429}, "every answer is the view's 401 or the limiter's 429"
    allowed = statuses.count(401)
    assert statuses.count(429) > 0, "the clients must outpace the refill for the test to mean much"
    elapsed = max(sent for sent, _ in results) - min(sent for sent, _ in results)
    expected = CAPACITY + RATE * elapsed
    assert abs(allowed - expected) <= TOLERANCE * expected, (allowed, expected, elapsed)

    # Each server counted its share in multiprocess metrics; together they saw it all.
    counted = 0.0
    for text in metrics:
        for value in re.findall(
            r'^resilience_ratelimit_decisions_total\{[^}]*policy="flood"[^}]*'
            r'result="allowed"[^}]*\} (\S+)$',
            text,
            re.MULTILINE,
        ):
            counted += float(value)
    assert counted == allowed


def test_the_loadtest_command_reports_admitted_against_the_bucket(tmp_path):
    port = free_port()
    env = child_environment(
        WEB_PORT=str(port),
        WEB_WORKERS="2",
        RATELIMIT_KEY_PREFIX=f"loadtest-{uuid.uuid4().hex}",
        RATELIMIT_POLICY_OVERRIDES=json.dumps({"flood": {"capacity": 50, "refill_rate": 50}}),
    )
    command = GUNICORN_COMMAND
    out = io.StringIO()
    with running(command, env=env, log_path=tmp_path / "web.log"):
        wait_for(
            lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, timeout=30, what="gunicorn"
        )
        call_command(
            "loadtest",
            url=f"http://127.0.0.1:{port}/api/v1/auth/me",
            concurrency=6,
            duration=2.0,
            capacity=50,
            rate=50,
            stdout=out,
        )
    report = out.getvalue()
    deviation = float(re.search(r"deviation ([+-][0-9.]+)%", report).group(1))
    assert abs(deviation) <= 2.0, report
    assert "limited: 0" not in report, report


def test_the_loadtest_command_refuses_non_loopback_targets():
    with pytest.raises(CommandError, match="loopback"):
        call_command("loadtest", url="http://192.0.2.10:8000/", duration=1)
