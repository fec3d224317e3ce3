"""Every chaos scenario, in compressed time, against a stack this module starts itself.

The same scenario code as ``manage.py chaos run`` (chaos.scenarios), so CI proves what
the reports show: faults of a few seconds, generous bounds, deadline waits only. The
stack: gunicorn (2 workers) and a Celery worker with beat as subprocesses, the proxy,
payments and the receiver in threads, a redis-server of our own on a free port; the
test database behind the proxy. The shared Postgres and Redis are never touched.
"""

from __future__ import annotations

import logging

import pytest

from chaos.scenarios import SCENARIOS, run_scenario
from chaos.scenarios.stack import LocalStack
from tests.processes import child_environment

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(240)]

RPS = 10.0
STEADY_S = 2.0


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, tmp_path_factory):
    from django.db import connections

    with django_db_blocker.unblock():
        env = child_environment()
        db = connections["default"].settings_dict
    database_url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    stack_env = {k: v for s in SCENARIOS.values() for k, v in s.stack_env.items()}
    # The simulators and the proxy log every request; keep the test output readable.
    for name in ("chaos.payments", "chaos.receiver", "chaos.proxy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with LocalStack(
        database_url=database_url,
        workdir=tmp_path_factory.mktemp("chaos-stack"),
        base_env=env,
        env=stack_env,
    ) as endpoints:
        yield endpoints


def _run(name: str, endpoints, capsys) -> None:
    scenario = SCENARIOS[name]
    ctx = run_scenario(
        scenario,
        endpoints,
        duration_s=scenario.ci_duration_s,
        rps=RPS,
        steady_s=STEADY_S,
        recover_timeout_s=30.0,
        log=lambda _line: None,
        seed=7,
    )
    report = "\n".join(f"  {c.passed!s:>5} {c.name}: {c.detail}" for c in ctx.checks)
    with capsys.disabled():
        s = ctx.summary
        if s:
            print(
                f"\n{name}: p99 during fault {s['p99_fault_s'] * 1000:.0f} ms, "
                f"recovered {s['time_to_recover_s']} s, by status {s['fault_by_status']}"
            )
    assert ctx.passed, f"{name} failed:\n{report}"


# Listed by hand, not read from the catalogue: a scenario added there without a CI run
# fails test_every_scenario_is_tested.
TESTED_SCENARIOS = [
    "redis-down",
    "redis-kill",
    "postgres-slow",
    "postgres-down",
    "payments-503",
    "payments-slow",
    "retry-storm",
    "bulkhead-saturation",
    "webhook-target-down",
]


@pytest.mark.parametrize("name", TESTED_SCENARIOS)
def test_scenario(name, stack, capsys):
    _run(name, stack, capsys)


def test_every_scenario_is_tested():
    assert set(SCENARIOS) == set(TESTED_SCENARIOS)
