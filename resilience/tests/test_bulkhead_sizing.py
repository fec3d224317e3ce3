"""The sizing rule: a bulkhead must be smaller than the concurrency of its process.

A semaphore of 8 slots in a process of 4 threads never fills, so a slow dependency
takes every thread (measured: reader p99 14 ms -> 2.4 s). ``manage.py check`` refuses to
start such a configuration (adr/0007).
"""

from __future__ import annotations

import subprocess

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from chaos.commands import GUNICORN_COMMAND, celery_worker_command
from conftest import override_policy
from tests.processes import ROOT, VENV_BIN, child_environment, free_port


def concurrency(settings, **kinds: int) -> None:
    settings.RESILIENCE = {
        **settings.RESILIENCE,
        "process_concurrency": {**settings.RESILIENCE["process_concurrency"], **kinds},
    }


def test_the_shipped_sizes_pass():
    call_command("check")


def test_a_bulkhead_as_large_as_the_threads_of_its_process_fails_the_check(settings):
    concurrency(settings, web=8)
    override_policy(settings, "payments", bulkhead={"max_concurrent": 8})
    with pytest.raises(SystemCheckError, match=r"resilience\.E008"):
        call_command("check")


def test_bulkheads_that_leave_too_little_to_everything_else_fail_the_check(settings):
    concurrency(settings, web=8)
    override_policy(settings, "payments", bulkhead={"max_concurrent": 5})  # < 8, but > 4
    with pytest.raises(SystemCheckError, match=r"resilience\.E009"):
        call_command("check")


def test_a_fleet_bulkhead_is_compared_with_one_worker_node(settings):
    concurrency(settings, webhooks=2)
    with pytest.raises(SystemCheckError, match=r"resilience\.E008"):
        call_command("check")  # 2 deliveries per host across the fleet, 2 children a node


def test_a_bulkhead_in_an_unknown_kind_of_process_fails_the_check(settings):
    override_policy(settings, "payments", bulkhead={"runs_in": "gateway"})
    with pytest.raises(SystemCheckError, match=r"resilience\.E007"):
        call_command("check")


@pytest.mark.parametrize(("threads", "fails"), [("4", True), ("16", False)])
def test_start_up_fails_when_the_web_threads_cannot_fill_the_payments_bulkhead(threads, fails):
    """The real start-up path: the environment of a deployment with too few threads."""
    result = subprocess.run(
        [str(VENV_BIN / "python"), "manage.py", "check"],
        cwd=ROOT,
        env=child_environment(WEB_THREADS=threads),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode != 0) is fails, result.stderr
    assert ("resilience.E009" in result.stderr) is fails


def test_gunicorn_refuses_to_start_when_the_threads_cannot_fill_the_bulkhead(tmp_path):
    """gunicorn runs no Django checks by itself: the start hook does (config/gunicorn.py)."""
    env = child_environment(WEB_THREADS="4", WEB_PORT=str(free_port()))
    result = subprocess.run(
        GUNICORN_COMMAND, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "resilience.E009" in result.stderr


def test_a_celery_worker_refuses_to_start_when_a_host_bulkhead_cannot_fill(tmp_path):
    env = child_environment(WORKER_WEBHOOKS_CONCURRENCY="2")
    command = celery_worker_command(queues="sizing-check", name=f"sizing-{tmp_path.name}")
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "resilience.E008" in result.stderr
