"""Every chaos scenario, in compressed time, against a stack this module starts itself.

The same scenario code as ``manage.py chaos run`` (chaos.scenarios), so CI proves what
the reports show: faults of a few seconds, generous bounds, deadline waits only. The
stack: gunicorn (the shipped WEB_WORKERS x WEB_THREADS) and a Celery worker with beat as
subprocesses, the proxy, payments and the receiver in threads, a redis-server of our own
on a free port; the test database behind the proxy. The shared Postgres and Redis are
never touched. Only durations are compressed (COMPRESSED_ENV); the collapse-load runs
also start a baseline stack (RESILIENCE_ENABLED=false) beside it.
"""

from __future__ import annotations

import logging
import os

import pytest

from chaos.scenarios import SCENARIOS, report, run_scenario
from chaos.scenarios.load import (
    COLLAPSE_CEILING_RPS,
    StackSettings,
    collapse_plan,
    settings_of_env,
    slow_call_threshold,
)
from chaos.scenarios.runner import beats_baseline_check, compare_with_baseline, measured_capacity
from chaos.scenarios.stack import COMPRESSED_ENV, LocalStack
from tests.processes import child_environment

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(240)]

RPS = 10.0
STEADY_S = 2.0
# The collapse load in CI: what a loaded 2-core runner can send and serve beside its own
# stack (the report runs use the command's ceiling).
CI_CEILING_RPS = 25.0


def _start_stack(django_db_blocker, tmp_path_factory, *, resilience: bool):
    from django.db import connections

    with django_db_blocker.unblock():
        env = child_environment()
        db = connections["default"].settings_dict
    database_url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    # The simulators and the proxy log every request; keep the test output readable.
    for name in ("chaos.payments", "chaos.receiver", "chaos.proxy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return LocalStack(
        database_url=database_url,
        workdir=tmp_path_factory.mktemp("chaos-stack" if resilience else "chaos-baseline"),
        base_env=env,
        resilience_enabled=resilience,
    )


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, tmp_path_factory):
    with _start_stack(django_db_blocker, tmp_path_factory, resilience=True) as endpoints:
        yield endpoints


@pytest.fixture(scope="module")
def baseline_stack(django_db_setup, django_db_blocker, tmp_path_factory):
    with _start_stack(django_db_blocker, tmp_path_factory, resilience=False) as endpoints:
        yield endpoints


def _experiment(name: str, endpoints, django_db_blocker, **kwargs):
    scenario = SCENARIOS[name]
    with django_db_blocker.unblock():  # the users are written into the test database
        return run_scenario(
            scenario,
            endpoints,
            duration_s=scenario.ci_duration_s,
            steady_s=STEADY_S,
            recover_timeout_s=30.0,
            collapse_ceiling_rps=CI_CEILING_RPS,
            log=lambda _line: None,
            seed=7,
            **kwargs,
        )


def _run(name: str, endpoints, capsys, django_db_blocker) -> None:
    # Steady load for each scenario (bulkhead-saturation included: below its slots its
    # bulkhead check says so and is skipped); the collapse load has its own test below.
    ctx = _experiment(name, endpoints, django_db_blocker, rps=RPS, load="steady")
    report = "\n".join(f"  {c.passed!s:>5} {c.name}: {c.detail}" for c in ctx.checks)
    with capsys.disabled():
        s = ctx.summary
        if s:
            print(
                f"\n{name}: p99 during fault {s['p99_fault_s'] * 1000:.0f} ms, "
                f"recovered {s['time_to_recover_s']} s, by status {s['fault_by_status']}"
            )
    assert ctx.passed, f"{name} failed:\n{report}"
    if name == "retry-storm":
        _good_client_beside_the_storm(ctx.summary, capsys)


def _good_client_beside_the_storm(summary, capsys) -> None:
    """The report compares the load each kind of client put on the server (issue 15)."""
    load = summary["client_load"]
    naive, good = load["naive"], load["good"]
    with capsys.disabled():
        print(
            f"retry-storm, requests per logical operation during the fault: naive"
            f" {naive['requests_per_operation']} ({naive['requests']} for"
            f" {naive['operations']}), good client {good['requests_per_operation']}"
            f" ({good['requests']} for {good['operations']})"
        )
    assert good["operations"] == naive["operations"] > 0
    assert good["requests_per_operation"] < naive["requests_per_operation"]


# Listed by hand, not read from the catalogue: a scenario added there without a CI run
# fails test_every_scenario_is_tested.
TESTED_SCENARIOS = [
    "redis-down",
    "redis-kill",
    "postgres-slow",
    "postgres-down",
    "postgres-hang",
    "payments-503",
    "refunds-payments-503",
    "payments-slow",
    "retry-storm",
    "bulkhead-saturation",
    "webhook-target-down",
    "overload",  # its own test below: a spike has no steady-load form
]


@pytest.mark.parametrize("name", [n for n in TESTED_SCENARIOS if n != "overload"])
def test_scenario(name, stack, capsys, django_db_blocker):
    _run(name, stack, capsys, django_db_blocker)


def test_a_spike_is_shed_lowest_class_first_and_nothing_is_lost(stack, capsys, django_db_blocker):
    """overload, compressed: 3x a steady load sized on the capacity it measures on the
    stack as shipped. The goodput and p99 figures are the report's (make chaos-report),
    printed here."""
    ctx = _experiment("overload", stack, django_db_blocker)
    by_name = {c.name: c for c in ctx.checks}
    spike = ctx.summary["priorities"]["spike"]
    with capsys.disabled():
        print(f"\noverload: {ctx.config['load']['description']}")
        for level, f in spike.items():
            p99 = "n/a" if f["p99_s"] is None else f"{f['p99_s'] * 1000:.0f} ms"
            print(
                f"  {level:<11} goodput {f['goodput_rps']:.1f}/s p99 {p99} "
                f"shed {f['shed']} ({f['shed_share']:.0%})"
            )
        for check in ctx.checks:
            print(f"  {check.passed!s:>5} {check.name}: {check.detail}")
    assert ctx.config["load"]["mode"] == "capacity"
    load = ctx.config["load"]
    assert load["spike_rps"] == pytest.approx(3 * load["rps"], rel=0.01)
    assert load["rps"] < load["capacity_rps"]  # 1x itself has headroom
    failed = [by_name[n] for n in INVARIANTS if not by_name[n].passed]
    assert not failed, f"overload: {failed}"
    # The shedder worked, and in its order: best effort is shed, and more than critical.
    assert spike["best_effort"]["shed"] > 0
    assert spike["best_effort"]["shed_share"] > spike["critical"]["shed_share"]


def test_the_traffic_knows_the_priority_each_view_declares():
    """PRIORITY_OF_OP (the overload checks) must say what the views' @priority says."""
    import uuid

    from django.urls import resolve

    from chaos.scenarios.traffic import PRIORITY_OF_OP
    from resilience.concurrency import priority_of

    requests = {
        "create": ("POST", "/api/v1/orders"),
        "storm": ("POST", "/api/v1/orders"),
        "get": ("GET", f"/api/v1/orders/{uuid.uuid4()}"),
        "list": ("GET", "/api/v1/orders"),
        "report": ("GET", "/api/v1/orders/report"),
    }
    assert set(requests) == set(PRIORITY_OF_OP)
    for op, (method, path) in requests.items():
        assert priority_of(resolve(path).func, method) == PRIORITY_OF_OP[op], op


def test_every_scenario_is_tested():
    assert set(SCENARIOS) == set(TESTED_SCENARIOS)


# The invariants of every run, whatever the load (issue 12): latency bounds, the
# slow-after-open count and the comparison with the baseline are figures of the report
# (make chaos-report), printed here, not asserted on a shared 2-core runner.
INVARIANTS = ("no lost orders", "no duplicates under retries", "only documented errors")


@pytest.fixture
def both_stacks(stack, baseline_stack):
    return stack, baseline_stack


@pytest.mark.parametrize("name", ["payments-slow"])
def test_collapse_load_beside_the_baseline(name, both_stacks, capsys, django_db_blocker, tmp_path):
    stack, baseline_stack = both_stacks
    ctx = _experiment(name, stack, django_db_blocker, load="collapse")
    # The same load: its settings and the capacity measured on the resilient stack.
    same = measured_capacity(ctx)
    baseline = _experiment(
        name, baseline_stack, django_db_blocker, load="collapse", capacity_rps=same
    )
    comparison = compare_with_baseline(ctx, baseline)
    beats = beats_baseline_check(ctx, comparison)
    written = report.write(tmp_path, ctx, baseline)
    text = (tmp_path / "report.md").read_text()
    with capsys.disabled():
        print(f"\n{name} at collapse load: {ctx.config['load']['description']}")
        for label, run in (("resilient", ctx), ("baseline", baseline)):
            for cls, f in run.summary["classes"].items():
                p99 = "n/a" if f["p99_s"] is None else f"{f['p99_s'] * 1000:.0f} ms"
                print(
                    f"  {label:<9} {cls:<6} goodput {f['goodput_rps']:.1f}/s p99 {p99} "
                    f"deferred {f['deferred']} shed {f['shed']} unserved {f['unserved']}"
                )
        print(f"  slow after open: {ctx.summary['slow_after_open']}")
        print(f"  {beats.passed} {beats.name}: {beats.detail}")
    assert ctx.config["load"]["mode"] == "collapse"
    assert ctx.config["rps"] == baseline.config["rps"] > RPS
    assert baseline.config["resilience_enabled"] == "false"
    by_name = {c.name: c for c in ctx.checks}
    failed = [by_name[n] for n in INVARIANTS if not by_name[n].passed]
    assert not failed, f"{name} at collapse load: {failed}"
    assert by_name[f"breaker {SCENARIOS[name].dependency} opened"].passed
    # The baseline loses no order either: the patterns are not what keeps orders.
    assert baseline.summary["orders_missing"] == 0
    assert baseline.summary["keys_with_several_orders"] == 0
    assert (tmp_path / "timeline-baseline.png") in written
    assert "| class | figure | resilient | baseline |" in text
    assert "baseline p99 / resilient p99" in text
    assert "requests slower than their healthy p99 + the slow-call threshold" in text


def test_collapse_plan_follows_the_stack_settings():
    """The load is computed from the stack's worker model and the fault, not restated."""
    stack = StackSettings(
        web_workers=3,
        web_threads=5,
        dependencies={"payments": {"timeouts": {"read_s": 1.5}}},
        source="test",
    )
    plan = collapse_plan(SCENARIOS["payments-slow"], stack, ceiling_rps=1000)
    # 2 s of latency held for 1.5 s (read timeout); orders are half the traffic.
    assert plan.hold_s == 1.5
    assert plan.capacity_rps == pytest.approx(3 * 5 / 1.5)
    assert plan.rps == int(1.5 * 10 / 0.5)
    assert "3 web processes x 5 threads / 1.5 s" in plan.describe()
    assert collapse_plan(SCENARIOS["payments-slow"], stack, ceiling_rps=20).rps == 20
    fast = collapse_plan(SCENARIOS["postgres-down"], stack, ceiling_rps=33)
    assert fast.capacity_rps is None
    assert fast.rps == 33


def test_the_stack_settings_are_read_from_its_environment():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "WEB_WORKERS": "3",
        "WEB_THREADS": "7",
    }
    stack = settings_of_env(env)
    assert (stack.web_workers, stack.web_threads) == (3, 7)
    assert stack.policy("payments")["bulkhead"]["max_concurrent"] >= 1
    threshold, source = slow_call_threshold(stack, "payments")
    assert threshold is not None, source
    assert threshold > 0


def test_compressed_time_changes_durations_only():
    """No scenario may pass only with an override production does not ship (issue 12)."""
    shaped = ("RATELIMIT", "BULKHEAD", "WEB_", "WORKER_", "TIMEOUT", "MAX_ATTEMPTS", "FAIL_MAX")
    assert [k for k in COMPRESSED_ENV if any(word in k for word in shaped)] == []


def test_the_command_restates_the_ceiling():
    from chaos.management.commands import chaos

    assert chaos.COLLAPSE_CEILING_RPS == COLLAPSE_CEILING_RPS


def test_slow_after_open_counts_only_requests_that_call_the_dependency():
    """A read slowed by a saturated CPU is not one the payments breaker could spare."""
    from types import SimpleNamespace

    from chaos.scenarios.runner import slow_after_open
    from chaos.scenarios.traffic import Sample

    stack = SimpleNamespace(policy=lambda _name: {"breaker": {"slow_call_s": 0.5}}, web_workers=2)

    def ctx_of(dependency: str, samples: list[Sample]) -> SimpleNamespace:
        return SimpleNamespace(
            scenario=SimpleNamespace(dependency=dependency),
            endpoints=SimpleNamespace(settings=stack),
            samples=samples,
            t_inject=1.0,
            t_heal=10.0,
        )

    samples = [
        Sample(t=0.2, latency_s=0.2, op="create", status=201, user=1),  # healthy, before
        Sample(t=0.3, latency_s=0.3, op="get", status=200, user=1),  # healthy, before
        Sample(t=2.0, latency_s=0.9, op="list", status=200, user=1),
        Sample(t=3.0, latency_s=0.9, op="get", status=200, user=1),
        Sample(t=4.0, latency_s=0.9, op="create", status=201, user=1),
        Sample(t=1.1, latency_s=0.9, op="create", status=201, user=1),  # before the opening
        Sample(t=5.0, latency_s=0.6, op="create", status=201, user=1),  # under 0.2 + 0.5
    ]
    payments = slow_after_open(ctx_of("payments", samples), since=1.5)
    assert (payments["count"], payments["by_class"]) == (1, {"orders": 1})
    assert payments["bar_s"] == pytest.approx(0.7)  # creates' healthy p99 + the threshold
    postgres = slow_after_open(ctx_of("postgres", samples), since=1.5)
    assert postgres["count"] == 3  # every request reads the database; bar 0.3 + 0.5


def test_slow_after_open_uses_the_servers_time_on_the_dependency_when_answers_carry_it():
    """A request slow because it queued or shared the CPU is not one the breaker spares;
    one that waited on the dependency is, however short its client-side latency bar."""
    from types import SimpleNamespace

    from chaos.scenarios.runner import slow_after_open
    from chaos.scenarios.traffic import NOT_SENT, Sample

    stack = SimpleNamespace(policy=lambda _name: {"breaker": {"slow_call_s": 0.5}}, web_workers=2)
    ctx = SimpleNamespace(
        scenario=SimpleNamespace(dependency="postgres"),
        endpoints=SimpleNamespace(settings=stack),
        t_inject=1.0,
        t_heal=10.0,
        samples=[
            Sample(0.2, 0.2, "create", 201, 1, dependency_s={"postgres": 0.05}),  # healthy
            Sample(0.3, 0.1, "get", 200, 1, dependency_s={"postgres": 0.02}),  # healthy
            # After the opening: 2 s late but 10 ms on Postgres (queued): not counted.
            Sample(2.0, 2.0, "get", 200, 1, dependency_s={"postgres": 0.01, "redis": 0.001}),
            # A refusal by the breaker: no time on it.
            Sample(2.5, 0.01, "create", 503, 1, dependency_s={"redis": 0.001}),
            # Waited 0.8 s on Postgres: counted.
            Sample(3.0, 0.9, "create", 201, 1, dependency_s={"postgres": 0.8}),
            # No HTTP answer after 5 s: judged by its latency, counted.
            Sample(4.0, 5.0, "create", 0, 1, error="timeout"),
            Sample(4.5, 0.0, "create", NOT_SENT, 1, error="in_flight_cap"),
        ],
    )
    slow = slow_after_open(ctx, since=1.5)
    assert slow["measure"] == "server"
    assert slow["wait_bar_s"] == pytest.approx(0.05 + 0.5)
    assert (slow["count"], slow["by_class"]) == (2, {"orders": 2})
    assert slow["client_count"] == 3  # the queued read too, as the client saw it
    assert slow["waits_s"] == [5.0, 0.8]


def test_the_capacity_command_measures_a_harness_stack_probe_by_probe(django_db_blocker):
    """`chaos capacity`: the measurement overload and the collapse loads run first,
    printed once per probe with its answers by status (the figures of adr/0010)."""
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    with django_db_blocker.unblock():  # the users are written into the test database
        call_command("chaos", "capacity", "--repeat", "2", "--users", "20", stdout=out)
    probes = [line for line in out.getvalue().splitlines() if line[:2] in ("1:", "2:")]
    assert len(probes) == 2, out.getvalue()
    for line in probes:
        assert float(line.split()[1]) > 0, line
        assert "closed loop" in line, line
        assert "s of warm-up" in line, line
        assert "200:" in line, line
