"""Recovery probes close open breakers off the user path; one prober for the fleet.

Against real dependencies: the payments simulator on free ports (down, slow, healed),
the suite's Redis for shared state, and child processes standing for other web or
worker processes of the fleet.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import sys

import pytest
import requests

from conftest import override_policy
from resilience import metrics, probes
from resilience.breakers import BreakerOpenError, breaker
from tests.processes import child_environment, running, wait_for

BODY = {"order_id": "o-1", "amount": 100, "currency": "EUR"}


def authorize(payments) -> int:
    response = requests.post(
        f"{payments.api_url}/authorizations",
        json=BODY,
        headers={"Idempotency-Key": "probe-test"},
        timeout=(0.25, 2.0),
    )
    response.raise_for_status()
    return response.status_code


def fast_probes(settings, **values) -> None:
    config = {**settings.RESILIENCE["probes"], "tick_s": 0.05, **values}
    settings.RESILIENCE = {**settings.RESILIENCE, "probes": config}


def probes_counted(outcome: str) -> float:
    return metrics.BREAKER_PROBES.labels("payments", outcome)._value.get()


def test_a_probe_closes_an_open_breaker_after_the_dependency_heals(payments, settings):
    override_policy(settings, "payments", breaker={"reset_timeout_s": 0.2})
    fast_probes(settings)
    payments.set_faults(down=True)
    cb = breaker("payments")
    failed_before = probes_counted("failed")
    cb.open()
    wait_for(lambda: probes_counted("failed") >= failed_before + 2, timeout=10, what="probes")
    assert cb.current_state == "open"
    # Answering again, but slower than the slow-call threshold (0.4 s): still not healthy.
    payments.set_faults(down=False, latency_ms=600)
    slow_before = probes_counted("failed")
    wait_for(lambda: probes_counted("failed") >= slow_before + 1, timeout=10, what="slow probe")
    assert cb.current_state == "open"
    payments.set_faults(latency_ms=0)
    wait_for(lambda: cb.current_state == "closed", timeout=10, what="closed by the probe")
    assert payments.stats()["requests"] == 0  # not one user call was a trial


def test_while_the_probe_runs_no_user_call_is_a_trial(payments, settings):
    override_policy(settings, "payments", breaker={"reset_timeout_s": 0.2})
    fast_probes(settings)
    payments.set_faults(down=True)
    cb = breaker("payments")
    failed_before = probes_counted("failed")
    cb.open()
    wait_for(lambda: probes_counted("failed") > failed_before, timeout=10, what="a probe")
    payments.set_faults(down=False, latency_ms=600)  # slow: the probe keeps failing
    for _ in range(30):  # across several open periods
        with pytest.raises(BreakerOpenError):
            cb.call(authorize, payments)
    assert payments.stats()["requests"] == 0


def test_without_a_probe_runner_user_calls_are_the_half_open_trials(payments, settings):
    override_policy(settings, "payments", breaker={"reset_timeout_s": 0.2, "half_open_calls": 2})
    fast_probes(settings, enabled=False)
    cb = breaker("payments")
    cb.open()
    wait_for(lambda: cb.open_remaining_s() == 0, timeout=5, what="open period over")
    assert cb.call(authorize, payments) == 201
    assert cb.current_state == "half-open"
    assert cb.call(authorize, payments) == 200  # same key: a replay, still a success
    assert cb.current_state == "closed"
    assert not probes.runner_alive()


def _child_runner_state(queue) -> None:
    before = probes.runner_alive()
    probes.ensure_runner()
    queue.put((before, probes.runner_alive()))


def test_the_runner_is_fork_safe(settings):
    """A forked child (a Celery pool process, a gunicorn worker) starts its own runner."""
    fast_probes(settings)
    probes.ensure_runner()
    assert probes.runner_alive()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_runner_state, args=(queue,))
    child.start()
    try:
        assert queue.get(timeout=20) == (False, True)
    finally:
        child.join(timeout=20)
        if child.is_alive():
            child.kill()


FLEET_MEMBER = """
import sys, time
import django
django.setup()
from resilience import probes
from resilience.breakers import breaker
breaker(sys.argv[1])
probes.ensure_runner()
print("member ready", flush=True)
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    time.sleep(0.05)
"""


def read_probes(path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_only_one_process_probes_a_shared_breaker_at_a_time(settings, tmp_path):
    """Two processes see the shared payments breaker open; their probes never overlap.

    Each probe takes 1 s while the open period is 0.2 s and the runners look every
    50 ms, so without the fleet lock the second process would start its own probe
    during the first one's second.
    """
    fast_probes(settings, enabled=False)  # this process only opens the breaker
    breaker("payments").open()
    log = tmp_path / "probes.jsonl"
    env = child_environment(
        PAYMENTS_BREAKER_PROBE="tests.probe_recorder.slow_failing_probe",
        PAYMENTS_BREAKER_RESET_S="0.2",
        BREAKER_PROBE_TICK_S="0.05",
        PROBE_LOG=str(log),
    )
    command = [sys.executable, "-c", FLEET_MEMBER, "payments", "60"]
    logs = [tmp_path / "member-1.log", tmp_path / "member-2.log"]
    with running(command, env=env, log_path=logs[0]), running(command, env=env, log_path=logs[1]):
        wait_for(
            lambda: all("member ready" in p.read_text(errors="replace") for p in logs),
            timeout=60,
            what="both fleet members",
        )
        wait_for(lambda: len(read_probes(log)) >= 4, timeout=60, what="four probes")
    runs = sorted(read_probes(log), key=lambda run: run["start"])
    for earlier, later in itertools.pairwise(runs):
        assert later["start"] >= earlier["end"] - 0.01, f"overlapping probes: {earlier} {later}"
    assert breaker("payments").current_state == "open"  # every probe failed
    breaker("payments").close()


OPENER = """
import django
django.setup()
from resilience.breakers import breaker
breaker("postgres").open()
print("postgres breaker opened", flush=True)
"""


@pytest.mark.django_db
def test_a_postgres_breaker_opened_in_one_process_is_open_in_another(settings, tmp_path):
    from django.db import connection

    fast_probes(settings, enabled=False)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")  # this process's breaker is built and closed
    assert breaker("postgres").current_state == "closed"
    log = tmp_path / "opener.log"
    env = child_environment(BREAKER_PROBES_ENABLED="false")
    with running([sys.executable, "-c", OPENER], env=env, log_path=log) as opener:
        opener.wait(timeout=60)
    assert "postgres breaker opened" in log.read_text(errors="replace")
    try:
        # Seen here within the state cache's 0.1 s, without one failed query of our own.
        wait_for(lambda: breaker("postgres").current_state == "open", timeout=5, what="open")
        with pytest.raises(BreakerOpenError), connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        breaker("postgres").close()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
