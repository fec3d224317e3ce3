"""Adaptive concurrency limit, priority partitions and queue-time shedding (adr/0010)."""

from __future__ import annotations

import dataclasses
import math
import threading
import time

import pytest
from django.test import Client, RequestFactory

from conftest import client_for
from resilience import concurrency, metrics
from resilience.concurrency import ConcurrencyLimiter, priority_of
from resilience.concurrency_limits import (
    WARM_UP_REQUESTS,
    Gradient2Limit,
    MinRttGradientLimit,
)
from resilience.tests.clock import Clock
from tests.processes import wait_for

pytestmark = pytest.mark.usefixtures("no_rate_limits", "load_shedding")


@pytest.fixture
def load_shedding(settings):
    """On, whatever the test settings say: these tests are about the limiter itself."""
    settings.RESILIENCE_CONCURRENCY = {**settings.RESILIENCE_CONCURRENCY, "enabled": True}


@pytest.fixture
def cfg(settings):
    concurrency.reset()
    return dataclasses.replace(
        concurrency.config(),
        min_limit=2,
        max_limit=32,
        initial_limit=16,
        min_rtt_interval_s=30.0,
        min_rtt_jitter=0.0,
        min_rtt_requests=10,
        min_rtt_max_s=1.0,
        min_rtt_concurrency=3,
        min_rtt_buffer=0.25,
        rtt_percentile=0.5,
    )


def run_windows(
    limit, clock: Clock, rtt_s: float, windows: int, waited_s: float = 0.0
) -> list[float]:
    """Feed ``windows`` windows of requests whose own part took ``rtt_s`` and which
    waited ``waited_s`` on dependencies, with the limit fully used."""
    seen = []
    for _ in range(windows):
        for _ in range(limit.cfg.min_window_samples):
            limit.sample(rtt_s, clock.now, waited_s)
        clock.now += limit.cfg.window_s
        limit.sample(rtt_s, clock.now, waited_s)
        seen.append(limit.limit)
    return seen


def measured(cfg, clock: Clock, rtt_s: float) -> MinRttGradientLimit:
    """A minRTT controller past its warm-up and its first measurement at ``rtt_s``."""
    limit = MinRttGradientLimit(cfg, clock=clock, jitter=lambda: 0.0)
    for _ in range(WARM_UP_REQUESTS + 1 + cfg.min_rtt_requests):
        limit.sample(rtt_s, clock.now)
    assert limit.min_rtt == pytest.approx(rtt_s)
    return limit


def test_the_first_min_rtt_is_measured_after_warm_up_under_a_pinned_limit(cfg):
    clock = Clock()
    limit = MinRttGradientLimit(cfg, clock=clock, jitter=lambda: 0.0)
    for _ in range(WARM_UP_REQUESTS):
        limit.sample(0.050, clock.now)  # a new process's slow first requests
    assert limit.min_rtt is None
    assert limit.limit == cfg.initial_limit
    admitted_before_the_pin = clock.now
    clock.now += 0.01
    limit.sample(0.010, clock.now)  # the measurement starts: the limit is pinned
    assert limit.measuring
    assert limit.limit == cfg.min_rtt_concurrency
    limit.sample(0.500, admitted_before_the_pin)  # ran beside many others: not a sample
    for _ in range(cfg.min_rtt_requests):
        limit.sample(0.010, clock.now)
    assert not limit.measuring
    assert limit.min_rtt == pytest.approx(0.010)
    assert limit.limit == cfg.initial_limit


def test_the_min_rtt_pin_never_outlasts_its_time_even_if_nothing_finishes(cfg):
    clock = Clock()
    limit = measured(cfg, clock, 0.010)
    clock.now += cfg.min_rtt_interval_s
    limit.sample(0.010, clock.now)  # due again: pinned
    assert limit.limit == cfg.min_rtt_concurrency
    clock.now += cfg.min_rtt_max_s  # the pinned slots are all held by slow requests
    assert limit.limit > cfg.min_rtt_concurrency
    assert limit.min_rtt == pytest.approx(0.010)  # too few samples: the reference stays


def test_a_measurement_cut_short_by_its_time_still_sets_min_rtt(cfg):
    """A node slow for everyone finishes few requests in the pin's second: they are the
    new reference, else the limit stays at its floor measuring again and again."""
    clock = Clock()
    limit = measured(cfg, clock, 0.010)
    clock.now += cfg.min_rtt_interval_s
    limit.sample(0.750, clock.now)  # due: the pin starts
    pinned_at = clock.now
    for _ in range(2):  # 3 slots, 0.75 s each: two finish within the second
        clock.now += 0.4
        limit.sample(0.750, pinned_at)
    clock.now += 0.3
    limit.sample(0.750, pinned_at + 0.1)  # the time is up with 3 samples
    assert not limit.measuring
    assert limit.min_rtt == pytest.approx(0.750)


def queueing(limit, clock: Clock, windows: int, *, overlaps: float = 3) -> list[float]:
    """A process that overlaps ``overlaps`` requests and queues the rest (latency grows
    with what it admits), with more traffic than it can take: every slot is filled."""
    seen = []
    for _ in range(windows):
        seen += run_windows(limit, clock, 0.010 * max(1.0, limit.limit / overlaps), 1)
    return seen


def test_the_min_rtt_limit_grows_near_min_rtt_and_shrinks_when_requests_queue(cfg):
    clock = Clock()
    limit = measured(cfg, clock, 0.010)
    grown = run_windows(limit, clock, 0.011, 10)
    assert grown[-1] == cfg.max_limit
    shrunk = queueing(limit, clock, 10)  # latency follows what is in flight
    assert shrunk[-1] <= 8
    assert limit.rebased_without_relief == 0  # the cuts made requests faster
    back = run_windows(limit, clock, 0.011, 10)
    assert back.index(cfg.max_limit) * cfg.window_s <= 2  # seconds to recover


def test_a_latency_that_cutting_the_limit_does_not_mend_becomes_min_rtt_at_once(cfg):
    """Every Postgres round trip slower (postgres-slow): latency rises tenfold whatever
    is in flight. Once the limit is cut by half and the requests admitted since are no
    faster, that latency is the new minRTT: the limit goes back up without reaching its
    floor, instead of shedding for the length of a dive, the floor and the way back."""
    clock = Clock()
    limit = measured(cfg, clock, 0.010)
    run_windows(limit, clock, 0.011, 10)
    seen = run_windows(limit, clock, 0.100, 12)
    assert limit.rebased_without_relief == 1
    assert limit.min_rtt == pytest.approx(0.100)
    assert min(seen) >= cfg.max_limit / 4  # never near the floor
    assert seen[-1] == cfg.max_limit


def test_a_slow_dependency_does_not_shrink_the_limit_but_queueing_in_the_process_does(cfg):
    """The limit follows the process's own part of each request. Every Postgres round
    trip 150 ms slower (postgres-slow): a request waits 1.8 s on Postgres and its own
    part stays near minRTT; fewer in flight would not make it faster, and the limit stays
    at the threads. Fed as the request's latency, the same 1.8 s halves it at once. A
    process whose own latency follows what it admits is queueing: the limit is cut."""
    clock = Clock()
    limit = measured(cfg, clock, 0.010)
    run_windows(limit, clock, 0.011, 10)
    slow_dependency = run_windows(limit, clock, 0.011, 20, waited_s=1.8)
    assert min(slow_dependency) == cfg.max_limit
    assert limit.wait_rtt == pytest.approx(1.8)
    assert queueing(limit, clock, 10)[-1] <= 8

    other_clock = Clock()
    whole = measured(cfg, other_clock, 0.010)
    run_windows(whole, other_clock, 0.011, 10)
    assert run_windows(whole, other_clock, 1.811, 1)[-1] < 0.7 * cfg.max_limit  # halved, + sqrt


def test_a_long_overload_cannot_become_the_new_normal_against_a_measured_min_rtt(cfg):
    """Gradient2's long average rises to the overloaded latency and lets the limit grow
    back into it; a measured minRTT stays the latency of a process that does not queue,
    so the limit stays where requests barely queue (adr/0010)."""
    clock = Clock()
    min_rtt = measured(cfg, clock, 0.010)
    gradient2 = Gradient2Limit(cfg, clock=clock)
    run_windows(gradient2, clock, 0.010, 20)
    # 20 s of overload, each limit starting from the threads.
    late = [queueing(limit, clock, 80)[-20:] for limit in (min_rtt, gradient2)]
    assert max(late[0]) <= 8  # latency within about 2.5x of the unqueued one
    assert min(late[1]) >= cfg.max_limit * 0.75  # the long average followed the queue


def test_the_limit_is_cut_at_most_once_per_round_trip(cfg):
    """Until a request admitted after a cut has finished, the windows only hold requests
    admitted before it: they say nothing of the cut, and must not cut again."""
    clock = Clock()
    limit = measured(cfg, clock, 0.010)
    admitted_long_ago = clock.now
    for _ in range(4):
        clock.now += cfg.window_s
        for _ in range(cfg.min_window_samples + 1):
            limit.sample(1.0, admitted_long_ago)  # slow, all admitted before any cut
    once = limit.limit
    assert once < cfg.initial_limit
    assert once > cfg.initial_limit / 2  # one cut, not four
    clock.now += cfg.window_s
    limit.sample(1.0, clock.now)  # the first request admitted after the cut is back
    for _ in range(cfg.min_window_samples):
        limit.sample(1.0, admitted_long_ago)
    clock.now += cfg.window_s
    limit.sample(1.0, admitted_long_ago)
    assert limit.limit < once  # now it may cut again


def test_a_limit_held_at_its_minimum_measures_min_rtt_again(cfg):
    """Near its floor (too near to be cut by half), the node got slower for everyone
    (another process takes the CPU): fewer requests cannot mend that, so the limit must
    not stay at its floor shedding for ever."""
    clock = Clock()
    limit = measured(dataclasses.replace(cfg, initial_limit=3), clock, 0.010)
    seen = run_windows(limit, clock, 0.100, 6)  # 10x: to the floor, 5 windows there
    assert math.floor(max(seen[:4])) == cfg.min_limit  # the limit in force
    assert limit.rebased_without_relief == 0
    assert limit.measurements == 2
    assert limit.min_rtt == pytest.approx(0.100)
    assert run_windows(limit, clock, 0.100, 10)[-1] == cfg.max_limit


READ_S, ORDER_S = 0.25, 0.90  # postgres-slow: a read and an order creation
MORE_READS = [READ_S, READ_S, READ_S, ORDER_S, ORDER_S]  # median: a read
MORE_ORDERS = [READ_S, READ_S, ORDER_S, ORDER_S, ORDER_S]  # median: an order


def mixed_windows(limit, clock: Clock, windows: int) -> list[float]:
    """Windows of half reads, half tenfold dearer orders, one more of either by turns."""
    seen = []
    for i in range(windows):
        for rtt in MORE_READS if i % 2 else MORE_ORDERS:
            limit.sample(rtt, clock.now)
        clock.now += limit.cfg.window_s
        seen.append(limit.limit)
    return seen


@pytest.mark.parametrize("statistic", ["mean", "percentile"])
def test_a_mix_of_cheap_and_dear_routes_holds_the_limit_steady_with_the_mean(cfg, statistic):
    """The latency does not depend on the limit here (every request waits on a slow
    Postgres): the limit must stay at the threads. The windows' medians flip between a
    read and an order, and a median-based gradient halves the limit on every other one;
    their means move by a quarter, inside the buffer."""
    cfg = dataclasses.replace(cfg, rtt_statistic=statistic)
    clock = Clock()
    limit = MinRttGradientLimit(cfg, clock=clock, jitter=lambda: 0.0)
    for _ in range(WARM_UP_REQUESTS + 1):
        limit.sample(READ_S, clock.now)
    for rtt in (MORE_READS + MORE_ORDERS) * 2:  # the measurement: the same mix
        limit.sample(rtt, clock.now)
    assert not limit.measuring
    seen = mixed_windows(limit, clock, 40)
    if statistic == "mean":
        assert min(seen[5:]) == cfg.max_limit
    else:
        assert min(seen[5:]) <= cfg.max_limit / 2


def test_min_rtt_is_measured_again_every_interval(cfg):
    clock = Clock()
    limit = measured(cfg, clock, 0.010)
    run_windows(limit, clock, 0.011, int(cfg.min_rtt_interval_s / cfg.window_s) - 2)
    assert not limit.measuring
    assert limit.measurements == 1
    run_windows(limit, clock, 0.011, 3)
    assert limit.measuring


def test_gradient2_grows_while_latency_holds_and_shrinks_when_it_rises(cfg):
    clock = Clock()
    limit = Gradient2Limit(cfg, clock=clock)
    grown = run_windows(limit, clock, 0.010, 40)
    assert grown[-1] == cfg.max_limit  # headroom: up to the bound
    shrunk = run_windows(limit, clock, 0.080, 30)  # latency x8: queueing somewhere
    assert shrunk[-1] < grown[-1] / 2
    assert shrunk[-1] >= cfg.min_limit


def test_after_an_overload_gradient2_recovers_within_a_bounded_number_of_windows(cfg):
    clock = Clock()
    limit = Gradient2Limit(cfg, clock=clock)
    run_windows(limit, clock, 0.010, 20)
    # A long overload: the limit falls, then the long average (60 windows) takes the
    # new latency for normal and the limit comes partly back (standing queues are the
    # queue budgets' business).
    overloaded = run_windows(limit, clock, 0.200, 40)
    low = min(overloaded)
    recovered = run_windows(limit, clock, 0.010, 60)
    back = next(i for i, value in enumerate(recovered) if value >= cfg.max_limit * 0.9)
    assert low < cfg.max_limit / 2
    assert back * cfg.window_s <= 10  # seconds of healthy traffic to recover


def test_a_gradient2_limit_shrunk_by_a_spike_grows_back_whatever_the_traffic_uses(cfg):
    """Light traffic may never fill half the limit; it must still get its limit back
    (Netflix grows only a used limit; ours is bounded by the threads, so it may)."""
    clock = Clock()
    limit = Gradient2Limit(cfg, clock=clock)
    run_windows(limit, clock, 0.010, 20)
    run_windows(limit, clock, 0.100, 30)
    assert limit.limit < cfg.max_limit / 2
    run_windows(limit, clock, 0.010, 60)
    assert limit.limit >= 0.9 * cfg.max_limit


@pytest.mark.django_db(transaction=True)
def test_time_spent_waiting_on_postgres_or_a_provider_is_counted_as_dependency_wait(payments, cfg):
    """The limiter samples a request's own part and its dependency waits apart: a call
    through ``resilience.calls`` and every Postgres query, commit and checkout count."""
    from django.db import connection, transaction

    from resilience.calls import count_dependency_wait, stop_counting_dependency_wait
    from resilience.http import client

    payments.set_faults(latency_ms=150)
    connection.close()  # the checkout below is a wait too
    waited, token = count_dependency_wait()
    started = time.perf_counter()
    try:
        client("payments").request(
            "POST",
            "/authorizations",
            json={"order_id": "o-wait", "amount": 100, "currency": "EUR"},
            idempotency_key="k-wait",
        )
        on_payments = waited[0]
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(0.2)")
        python_work_until = time.perf_counter() + 0.05
        while time.perf_counter() < python_work_until:  # bounded: 50 ms of own work
            pass
    finally:
        stop_counting_dependency_wait(token)
    total = time.perf_counter() - started
    assert on_payments >= 0.15
    assert waited[0] - on_payments >= 0.2  # the query (and the checkout, the commit)
    assert total - waited[0] >= 0.05  # the process's own work is not a wait
    # The limit samples both: the own part, and the wait added to both sides.
    limiter = ConcurrencyLimiter(cfg)
    limiter.gradient.min_rtt = 0.01  # measured, and not due again
    limiter.gradient._next_measurement = math.inf
    assert limiter.try_acquire("critical") is None
    limiter.release("critical", total - waited[0], time.monotonic(), waited[0])
    assert limiter.gradient._windows.latencies == [pytest.approx(total - waited[0])]
    assert limiter.gradient._windows.waits == [pytest.approx(waited[0])]


def test_static_mode_keeps_its_limit(cfg):
    static = ConcurrencyLimiter(dataclasses.replace(cfg, mode="static", static_limit=3))
    assert [static.try_acquire("critical") for _ in range(3)] == [None] * 3
    assert static.try_acquire("critical").reason == "limit"


def test_lower_classes_borrow_idle_slots_but_never_the_ones_higher_classes_are_owed(cfg):
    # limit 10: critical is owed 5, normal 3, best-effort 2.
    limiter = ConcurrencyLimiter(dataclasses.replace(cfg, mode="static", static_limit=10))
    admitted = [limiter.try_acquire("best_effort") for _ in range(3)]
    assert admitted[:2] == [None, None]  # its own share
    assert admitted[2].reason == "priority"  # the other 8 are owed to critical and normal
    assert [limiter.try_acquire("normal") for _ in range(3)] == [None] * 3
    # Normal beyond its share may use what critical is not owed: nothing is left.
    assert limiter.try_acquire("normal").reason == "priority"
    assert [limiter.try_acquire("critical") for _ in range(5)] == [None] * 5
    assert limiter.try_acquire("critical").reason == "limit"
    limiter.release("best_effort", 0.01, started_s=0.0)
    assert limiter.try_acquire("critical") is None  # critical may borrow any free slot


def test_a_share_of_less_than_one_slot_is_none_so_a_small_limit_goes_to_critical(cfg):
    """A limit shrunk to 4 owes best effort 0.8 of a slot: it may borrow, never reserve
    (with one reserved slot per class, half a small limit was kept from critical)."""
    limiter = ConcurrencyLimiter(dataclasses.replace(cfg, mode="static", static_limit=4))
    assert [limiter.try_acquire("critical") for _ in range(3)] == [None] * 3
    assert limiter.try_acquire("best_effort").reason == "priority"  # normal is owed one
    assert limiter.try_acquire("critical") is None  # the last slot


def test_views_declare_their_class_in_one_line():
    from accounts.apis import LoginApi
    from orders.apis import OrderListCreateApi, OrderReportApi

    assert priority_of(OrderListCreateApi.as_view(), "POST") == "critical"
    assert priority_of(OrderListCreateApi.as_view(), "GET") == "normal"
    assert priority_of(OrderReportApi.as_view(), "GET") == "best_effort"
    assert priority_of(LoginApi.as_view(), "POST") == "critical"
    with pytest.raises(ValueError, match="unknown priority"):
        concurrency.priority("urgent")


def test_queue_start_header_in_seconds_or_milliseconds():
    factory = RequestFactory()
    now = 1_800_000_000.0
    for value in (f"t={now - 0.75:.3f}", f"{(now - 0.75) * 1000:.0f}"):
        request = factory.get("/api/v1/orders", HTTP_X_REQUEST_START=value)
        assert concurrency.queue_wait_s(request, now=now) == pytest.approx(0.75, abs=0.01)
    future = factory.get("/", HTTP_X_REQUEST_START=f"t={now + 10}")
    assert concurrency.queue_wait_s(future, now=now) is None  # skewed: ignored
    concurrency.set_queue_wait(0.3)  # what the gunicorn worker measured
    try:
        assert concurrency.queue_wait_s(factory.get("/")) == 0.3
    finally:
        concurrency.set_queue_wait(None)


@pytest.mark.django_db
def test_a_burst_may_wait_the_long_budget_but_a_standing_queue_only_the_short_one(cfg):
    clock = Clock()
    watch = concurrency.QueueWatch(cfg, clock=clock)
    long, short = cfg.queue_budgets_s["critical"], cfg.standing_queue_budgets_s["critical"]
    assert short < long
    # A burst: requests wait, but one found the queue empty a moment ago.
    assert watch.budget("critical", 0.0) == long
    clock.now += cfg.standing_after_s / 2
    assert watch.budget("critical", 0.6) == long
    # No request has found the queue empty for longer than standing_after_s: it stands.
    clock.now += cfg.standing_after_s
    assert watch.budget("critical", 0.6) == short
    assert watch.standing
    # Shed requests keep looking: once one finds the queue empty, bursts are allowed again.
    assert watch.budget("critical", cfg.queue_empty_s / 2) == long
    assert not watch.standing


def test_a_shed_answer_is_counted_not_logged_as_an_error(auth_client, caplog):
    stale = f"t={time.time() - 5:.3f}"
    with caplog.at_level("WARNING", logger="django.request"):
        response = auth_client.get("/api/v1/orders/report", HTTP_X_REQUEST_START=stale)
    assert response.status_code == 503
    assert not [r for r in caplog.records if r.name == "django.request"]


def test_a_request_that_waited_past_its_budget_is_shed_before_any_work(auth_client):
    stale = f"t={time.time() - 5:.3f}"  # waited 5 s in some queue: past every budget
    response = auth_client.get("/api/v1/orders/report", HTTP_X_REQUEST_START=stale)
    assert response.status_code == 503
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert (body["code"], body["reason"], body["priority"]) == (
        "overloaded",
        "queue_time",
        "best_effort",
    )
    assert 1 <= int(response["Retry-After"]) <= 3
    fresh = f"t={time.time():.3f}"
    assert auth_client.get("/api/v1/orders", HTTP_X_REQUEST_START=fresh).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_over_the_limit_orders_get_a_fast_documented_503_and_reads_of_higher_class_pass(
    settings, payments, user
):
    settings.RESILIENCE_CONCURRENCY = {
        **settings.RESILIENCE_CONCURRENCY,
        "mode": "static",
        "static_limit": 2,
    }
    payments.set_faults(latency_ms=250)
    headers = dict(client_for(user)._credentials)
    answers: list[tuple[int, float, str | None]] = []
    start = threading.Barrier(4)

    def order() -> None:
        start.wait(5)
        began = time.perf_counter()
        response = Client(**headers).post(
            "/api/v1/orders",
            {"currency": "EUR", "items": [{"sku": "a", "quantity": 1, "unit_price": 100}]},
            content_type="application/json",
        )
        code = response.json().get("code") if response.status_code == 503 else None
        answers.append((response.status_code, time.perf_counter() - began, code))

    threads = [threading.Thread(target=order) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    served = [a for a in answers if a[0] == 201]
    shed = [a for a in answers if a[0] == 503]
    assert len(served) == 2
    assert len(shed) == 2
    assert {code for _, _, code in shed} == {"overloaded"}
    # Shedding costs far less than serving: no payments wait, no database work.
    assert max(t for _, t, _ in shed) < min(t for _, t, _ in served)


def pinned_limiter(cfg, **changes) -> tuple[ConcurrencyLimiter, Clock]:
    """A limiter whose minRTT measurement has just begun: its limit is pinned."""
    clock = Clock()
    state = ConcurrencyLimiter(dataclasses.replace(cfg, **changes), clock=clock)
    for _ in range(WARM_UP_REQUESTS + 1 + cfg.min_rtt_requests):
        state.gradient.sample(0.010, clock.now)
    clock.now += cfg.min_rtt_interval_s
    state.gradient.sample(0.010, clock.now)
    assert state.gradient.measuring
    assert state.limit == cfg.min_rtt_concurrency
    for _ in range(cfg.min_rtt_concurrency):
        assert state.try_acquire("critical") is None
    return state, clock


def pin_waits(outcome: str) -> float:
    return metrics.CONCURRENCY_PIN_WAITS.labels(outcome)._value.get()


def test_a_request_beyond_a_min_rtt_pin_waits_for_a_slot_instead_of_being_shed(cfg):
    """The pin is the limiter's own measurement, not overload: at a healthy load a pinned
    slot frees within one request's time, and shedding there was a 503 for nothing."""
    state, clock = pinned_limiter(cfg, min_rtt_pin_wait_s=10.0)
    admitted_before = pin_waits("admitted")
    outcome = []
    waiter = threading.Thread(target=lambda: outcome.append(state.try_acquire("critical")))
    waiter.start()
    try:
        wait_for(lambda: state.pin_waiting == 1, timeout=5, what="a request waiting on the pin")
        assert outcome == []  # waiting, not shed
    finally:
        state.release("critical", 0.010, clock.now)  # a pinned request finishes
        waiter.join(timeout=5)
    assert outcome == [None]  # admitted under the pin
    assert state.in_flight["critical"] == cfg.min_rtt_concurrency
    assert pin_waits("admitted") - admitted_before == 1


def test_a_pin_that_frees_no_slot_in_time_sheds_and_no_pin_sheds_at_once(cfg):
    state, clock = pinned_limiter(cfg, min_rtt_pin_wait_s=0.05)
    shed_before = pin_waits("shed")
    decision = state.try_acquire("critical")  # nothing finishes within the wait
    assert decision is not None
    assert decision.reason == "limit"
    assert pin_waits("shed") - shed_before == 1
    clock.now += cfg.min_rtt_max_s  # the pin's time is up: the limit is the estimate
    assert state.limit > cfg.min_rtt_concurrency
    assert not state.gradient.measuring
    while state.try_acquire("critical") is None:  # fill the real limit
        assert sum(state.in_flight.values()) <= cfg.max_limit
    assert pin_waits("shed") - shed_before == 1  # over the real limit: shed, no wait
