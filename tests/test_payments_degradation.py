"""Payments failing in every way never fails an order: breaker, budget, bulkhead, deferral.

The payments provider is a real HTTP service (chaos.payments) on free ports.
"""

from __future__ import annotations

import statistics
import threading
import time
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from conftest import client_for, override_policy
from orders.models import Order
from resilience import metrics
from resilience.breakers import breaker
from resilience.policies import get_policy
from tests.processes import (
    celery_worker_command,
    child_environment,
    running,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("no_rate_limits", "no_load_shedding")

ORDER = {"currency": "EUR", "items": [{"sku": "abc", "quantity": 2, "unit_price": 1250}]}


def place(client) -> tuple[int, dict, float]:
    started = time.perf_counter()
    response = client.post("/api/v1/orders", ORDER, format="json")
    return response.status_code, response.json(), time.perf_counter() - started


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@pytest.mark.django_db
def test_payments_healthy_the_order_is_paid_once(payments, auth_client):
    status, body, _ = place(auth_client)
    assert (status, body["status"]) == (201, "paid")
    order = Order.objects.get(id=body["id"])
    assert order.payment_authorization_id.startswith("auth_")
    assert payments.stats()["authorizations"] == 1
    assert payments.requests_by_key() == {f"order-{order.id}": 1}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True, databases=["default", "background"])
def test_payments_hard_down_orders_are_deferred_then_paid_exactly_once(
    payments, settings, user, tmp_path, capsys
):
    override_policy(settings, "payments", breaker={"reset_timeout_s": 1.0})
    client = client_for(user)
    payments.set_faults(down=True)
    refused = metrics.BREAKER_NOT_PERMITTED.labels("payments")
    refused_before = refused._value.get()

    latencies = []
    for _ in range(15):
        status, body, elapsed = place(client)
        assert (status, body["status"]) == (201, "pending_payment")
        latencies.append(elapsed)
    assert breaker("payments").current_state == "open"
    policy_timeout = 0.25 + 1.0  # connect + read of one attempt
    p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
    with capsys.disabled():
        print(f"\npayments down: order latency p50={p50 * 1000:.1f} ms p99={p99 * 1000:.1f} ms")
    assert p99 < policy_timeout
    # Once open, orders stop reaching payments at all: the refusals are counted.
    assert refused._value.get() - refused_before >= 10

    payments.set_faults(down=False)
    wait_for(lambda: breaker("payments").open_remaining_s() == 0, timeout=5, what="open period")
    Order.objects.filter(status="pending_payment").update(
        next_payment_attempt_at="2000-01-01T00:00Z"
    )

    # A real worker process sweeps and authorises the deferred orders.
    log = tmp_path / "worker.log"
    env = child_environment(
        PAYMENTS_URL=payments.api_url,
        PAYMENTS_BREAKER_RESET_S="1",
        ORDERS_DEFERRED_PAYMENT_BASE_S="0.2",
    )
    command = celery_worker_command(queues="default", name=f"pay-{tmp_path.name}", concurrency=2)
    from orders.tasks import sweep_deferred_payments

    with running(command, env=env, log_path=log):
        wait_for(
            lambda: "ready" in log.read_text(errors="replace"), timeout=30, what="worker ready"
        )
        sweep_deferred_payments.delay()
        wait_for(
            lambda: not Order.objects.filter(status="pending_payment").exists(),
            timeout=30,
            what="every deferred order authorised",
        )
    orders = list(Order.objects.all())
    assert {o.status for o in orders} == {"paid"}
    by_key = payments.requests_by_key()
    assert payments.stats()["authorizations"] == len(orders) == 15
    assert all(by_key[f"order-{o.id}"] >= 1 for o in orders)
    assert len({o.payment_authorization_id for o in orders}) == 15


def amplification(payments, settings, user, *, budget: bool, orders: int = 50) -> float:
    """Calls reaching payments per order while it answers 503 to everything."""
    override_policy(
        settings,
        "payments",
        # Isolate the budget: keep the breaker out of it.
        breaker={"window": "consecutive", "fail_max": 10_000},
        retry={"budget_min_retries": 3 if budget else 1_000_000, "base_s": 0.001, "cap_s": 0.002},
    )
    payments.reset()
    payments.set_faults(error_rate=1.0, error_status=503, retry_after=0)
    client = client_for(user)
    for _ in range(orders):
        status, body, _ = place(client)
        assert (status, body["status"]) == (201, "pending_payment")
    return payments.stats()["requests"] / orders


@pytest.mark.django_db
def test_the_retry_budget_caps_load_on_a_failing_dependency(payments, settings, user, capsys):
    with_budget = amplification(payments, settings, user, budget=True)
    without_budget = amplification(payments, settings, user, budget=False)
    with capsys.disabled():
        print(
            f"\n503 storm: calls per order with budget {with_budget:.2f},"
            f" without {without_budget:.2f}"
        )
    assert with_budget <= 1 + 0.2 + 3 / 50 + 0.05
    assert without_budget >= 2.9


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_slow_payments_fill_the_bulkhead_and_only_payments_calls_wait(
    payments, settings, user, capsys
):
    """Shipped defaults: payments slower than the request budget while orders pile up.

    The bulkhead's slots are the only threads slow payments can hold; each admitted
    order waits at most the request budget (its read timeout is not retried) and the
    rest are refused by the bulkhead at once. All are accepted as ``pending_payment``.
    """
    policy = get_policy("payments")
    slots = policy.bulkhead.max_concurrent
    budget = policy.timeouts.request_budget_s
    orders = slots + 4
    token_client = client_for(user)
    headers = dict(token_client._credentials)

    def timed_get() -> float:
        started = time.perf_counter()
        assert Client(**headers).get("/api/v1/orders").status_code == 200
        return time.perf_counter() - started

    baseline = [timed_get() for _ in range(20)]
    rejected_before = metrics.BULKHEAD_REJECTED.labels("payments")._value.get()
    gave_up_before = metrics.RETRY_GAVE_UP.labels("payments", "not_retryable")._value.get()
    payments.set_faults(latency_ms=800)
    results: list[tuple[str, float]] = []
    barrier = threading.Barrier(orders)

    def order():
        barrier.wait(timeout=5)
        started = time.perf_counter()
        response = Client(**headers).post("/api/v1/orders", ORDER, content_type="application/json")
        results.append((response.json()["status"], time.perf_counter() - started))

    threads = [threading.Thread(target=order) for _ in range(orders)]
    for thread in threads:
        thread.start()
    wait_for(
        lambda: metrics.BULKHEAD_IN_USE.labels("payments")._value.get() == slots,
        timeout=5,
        what="slots held",
    )
    during = [timed_get() for _ in range(5)]
    for thread in threads:
        thread.join(timeout=10)

    durations = sorted(t for _, t in results)
    with capsys.disabled():
        print(
            f"\nslow payments: GET /orders p50 {statistics.median(baseline) * 1000:.1f} ms before,"
            f" {statistics.median(during) * 1000:.1f} ms during; {orders} orders answered in"
            f" {durations[0] * 1000:.0f}..{durations[-1] * 1000:.0f} ms"
            f" (budget {budget * 1000:.0f} ms)"
        )
    assert [status for status, _ in results] == ["pending_payment"] * orders
    # Only the bulkhead's slots reached payments, once each: no read timeout was retried...
    assert payments.stats()["requests"] == slots
    assert metrics.BULKHEAD_REJECTED.labels("payments")._value.get() - rejected_before == 4
    # ...the admitted ones gave up at the budget with a read timeout, not retried (they
    # never waited the 800 ms payments takes), and the refused ones did not wait at all.
    gave_up = metrics.RETRY_GAVE_UP.labels("payments", "not_retryable")._value.get()
    assert gave_up - gave_up_before == slots
    assert durations[3] < durations[-slots]
    assert durations[-1] >= budget
    assert statistics.median(during) < 3 * statistics.median(baseline) + 0.05


@pytest.mark.django_db
def test_a_deferred_authorisation_refused_by_the_open_breaker_spends_no_attempt(
    payments, settings, user
):
    """An outage longer than the schedule must not fail orders: refusals are not attempts."""
    from orders.services import order_authorize_deferred

    settings.ORDERS_DEFERRED_PAYMENT_MAX_ATTEMPTS = 2
    payments.set_faults(down=True)
    status, body, _ = place(client_for(user))
    assert (status, body["status"]) == (201, "pending_payment")
    breaker("payments").force_open()
    for _ in range(5):  # more refusals than the schedule allows attempts
        Order.objects.filter(id=body["id"]).update(next_payment_attempt_at="2000-01-01T00:00Z")
        order = order_authorize_deferred(order_id=body["id"])
        assert order.status == "pending_payment"
        assert order.payment_attempts == 0
    # Rescheduled for when the breaker lets calls through, not on the attempt schedule.
    open_for = timedelta(seconds=breaker("payments").open_remaining_s())
    assert order.next_payment_attempt_at >= timezone.now() + open_for - timedelta(seconds=5)
    assert payments.stats()["requests"] <= 3  # only the request path's own attempts

    payments.set_faults(down=False)
    breaker("payments").close()
    Order.objects.filter(id=body["id"]).update(next_payment_attempt_at="2000-01-01T00:00Z")
    assert order_authorize_deferred(order_id=body["id"]).status == "paid"


@pytest.mark.django_db
def test_a_sweep_claims_what_it_enqueues_so_the_next_sweeps_do_not_enqueue_it_again(
    payments, user, monkeypatch
):
    """At collapse load the queue filled with copies of the same orders (6786 tasks for
    about 230 orders): each sweep enqueued every due order again until its task ran."""
    from orders import tasks

    payments.set_faults(down=True)
    client = client_for(user)
    for _ in range(3):
        assert place(client)[1]["status"] == "pending_payment"
    Order.objects.update(next_payment_attempt_at="2000-01-01T00:00Z")
    published: list[str] = []
    monkeypatch.setattr(tasks.authorize_deferred_payment, "delay", published.append)
    assert tasks.sweep_deferred_payments() == 3
    assert tasks.sweep_deferred_payments() == 0  # claimed: not enqueued twice
    assert sorted(published) == sorted(str(o.id) for o in Order.objects.all())


@pytest.mark.django_db
def test_a_sweep_that_cannot_publish_leaves_the_orders_due(payments, user, monkeypatch):
    from orders import tasks

    payments.set_faults(down=True)
    assert place(client_for(user))[1]["status"] == "pending_payment"
    Order.objects.update(next_payment_attempt_at="2000-01-01T00:00Z")

    def broker_down(_order_id):
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(tasks.authorize_deferred_payment, "delay", broker_down)
    with pytest.raises(ConnectionError):
        tasks.sweep_deferred_payments()
    assert Order.objects.get().next_payment_attempt_at <= timezone.now()  # due again


@pytest.mark.django_db(transaction=True)
def test_without_the_patterns_a_payments_outage_is_a_503_and_the_retry_pays_the_order(
    payments, user, auth_client, settings
):
    """Deferral is graceful degradation, declared through ``resilience.degrade``: the
    baseline (RESILIENCE_ENABLED=false) answers the documented 503 with Retry-After that
    the refusal is, and the client's retry with the same key pays the order once."""
    key = f"baseline-{time.monotonic_ns()}"
    payments.set_faults(error_rate=1.0, error_status=503, retry_after=0)
    settings.RESILIENCE_ENABLED = True
    deferred = auth_client.post(
        "/api/v1/orders", ORDER, format="json", HTTP_IDEMPOTENCY_KEY=f"{key}-on"
    )
    assert (deferred.status_code, deferred.json()["status"]) == (201, "pending_payment")

    settings.RESILIENCE_ENABLED = False
    refused = auth_client.post("/api/v1/orders", ORDER, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert refused.status_code == 503
    assert refused["Content-Type"].startswith("application/problem+json")
    assert int(refused["Retry-After"]) >= 1
    assert refused.json()["code"] == "dependency_unavailable"

    payments.reset()
    retried = auth_client.post("/api/v1/orders", ORDER, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert (retried.status_code, retried.json()["status"]) == (201, "paid")
    # Two orders: the deferred one, and the refused attempt's, resumed and paid once.
    assert sorted(Order.objects.filter(owner=user).values_list("status", flat=True)) == [
        "paid",
        "pending_payment",
    ]
