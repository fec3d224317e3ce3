"""Refunds against the real payments simulator, the real Postgres and a real worker."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from rest_framework.authtoken.models import Token

from config.celery import app
from conftest import client_for, override_policy
from orders import refunds
from orders.models import Order, Refund
from resilience.breakers import breaker
from resilience.policies import get_policy
from tests.concurrency import client_with_token, run_threads
from tests.problems import assert_problem
from tests.processes import celery_worker_command, child_environment, running, wait_for
from tests.ratelimit_support import ratelimit_settings
from webhooks.models import OutboxEvent

pytestmark = pytest.mark.usefixtures("no_load_shedding")

ORDER_OF_1000 = {"currency": "EUR", "items": [{"sku": "abc", "quantity": 4, "unit_price": 250}]}


def paid_order(client) -> str:
    response = client.post("/api/v1/orders", ORDER_OF_1000, format="json")
    assert (response.status_code, response.json()["status"]) == (201, "paid")
    return response.json()["id"]


def refund(client, order_id: str, body, key: str | None = None):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    return client.post(f"/api/v1/orders/{order_id}/refunds", body, format="json", **headers)


def subscribe(user) -> None:
    """A subscriber of order.refunded, so the events land in the outbox (fan-out at emit)."""
    from webhooks.services import endpoint_create

    endpoint_create(owner=user, url="http://127.0.0.1:9/hooks", event_types=["order.refunded"])


@pytest.mark.django_db
def test_partial_then_full_refund_moves_the_order_and_emits_one_event_each(payments, user):
    subscribe(user)
    client = client_for(user)
    order_id = paid_order(client)

    first = refund(client, order_id, {"amount": 300, "reason": "one returned"})
    assert first.status_code == 201
    assert first.json()["status"] == "succeeded"
    assert first.json()["amount"] == 300
    assert first.json()["currency"] == "EUR"
    order = Order.objects.get(id=order_id)
    assert (order.status, order.refunded_amount, order.refund_pending_amount) == (
        "partially_refunded",
        300,
        0,
    )
    second = refund(client, order_id, {"amount": 700})
    assert (second.status_code, second.json()["status"]) == (201, "succeeded")
    order.refresh_from_db()
    assert (order.status, order.refunded_amount) == ("refunded", 1000)
    # The provider refunded each once, keyed by the refund's id.
    assert payments.refund_stats()["refunds"] == 2
    ids = {first.json()["id"], second.json()["id"]}
    assert set(payments.refund_requests_by_key()) == {f"refund-{i}" for i in ids}
    events = OutboxEvent.objects.filter(type="order.refunded")
    assert sorted(e.payload["data"]["refund"]["id"] for e in events) == sorted(ids)
    assert {e.payload["data"]["order"]["status"] for e in events} == {
        "partially_refunded",
        "refunded",
    }
    # A fully refunded order is refunded no more.
    assert_problem(refund(client, order_id, {"amount": 1}), 409, "order_not_refundable")
    app.control.purge()  # no worker here: drop the delivery messages this test published


@pytest.mark.django_db
def test_the_same_key_replays_and_another_body_is_422(payments, auth_client):
    order_id = paid_order(auth_client)
    key = str(uuid.uuid4())
    first = refund(auth_client, order_id, {"amount": 300}, key)
    replay = refund(auth_client, order_id, {"amount": 300}, key)
    assert (first.status_code, replay.status_code) == (201, 201)
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.json() == first.json()
    other = refund(auth_client, order_id, {"amount": 400}, key)
    assert_problem(other, 422, "idempotency_key_mismatch")
    assert Refund.objects.count() == 1
    assert Order.objects.get(id=order_id).refunded_amount == 300
    assert payments.refund_stats()["requests"] == 1


@pytest.mark.django_db
def test_more_than_is_left_is_refused_and_the_key_stays_usable(payments, auth_client):
    order_id = paid_order(auth_client)
    body = assert_problem(
        refund(auth_client, order_id, {"amount": 1001}), 422, "refund_exceeds_remaining"
    )
    assert body["refundable_amount"] == 1000
    assert refund(auth_client, order_id, {"amount": 600}).status_code == 201
    key = str(uuid.uuid4())
    body = assert_problem(
        refund(auth_client, order_id, {"amount": 500}, key), 422, "refund_exceeds_remaining"
    )
    assert body["refundable_amount"] == 400
    # A refusal before any work stores nothing: the key may carry the corrected body.
    assert refund(auth_client, order_id, {"amount": 400}, key).status_code == 201
    assert Order.objects.get(id=order_id).status == "refunded"
    assert payments.refund_stats()["refunds"] == 2


@pytest.mark.django_db
def test_an_unpaid_order_is_refused(payments, auth_client):
    payments.set_faults(down=True)
    response = auth_client.post("/api/v1/orders", ORDER_OF_1000, format="json")
    assert response.json()["status"] == "pending_payment"
    body = assert_problem(
        refund(auth_client, response.json()["id"], {"amount": 100}), 409, "order_not_refundable"
    )
    assert body["order_status"] == "pending_payment"
    assert Refund.objects.count() == 0
    assert payments.refund_stats()["requests"] == 0


@pytest.mark.django_db
def test_another_currency_is_refused(payments, auth_client):
    order_id = paid_order(auth_client)
    body = assert_problem(
        refund(auth_client, order_id, {"amount": 100, "currency": "USD"}),
        422,
        "refund_currency_mismatch",
    )
    assert body["order_currency"] == "EUR"
    same = refund(auth_client, order_id, {"amount": 100, "currency": "EUR"})
    assert same.status_code == 201


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [
        {},
        {"amount": 0},
        {"amount": -5},
        {"amount": "100"},
        {"amount": 1.5},
        {"amount": True},
        {"amount": 10**15},
        {"amount": 100, "reason": "x" * 501},
        {"amount": 100, "reason": 7},
        {"amount": 100, "currency": "XXX"},
    ],
)
def test_bad_input_is_a_400_problem(payments, auth_client, body):
    order_id = paid_order(auth_client)
    assert_problem(refund(auth_client, order_id, body), 400, "invalid")
    assert payments.refund_stats()["requests"] == 0


@pytest.mark.django_db
def test_another_users_order_and_no_order_are_404(payments, auth_client, make_user):
    theirs = paid_order(client_for(make_user()[0]))
    assert_problem(refund(auth_client, theirs, {"amount": 100}), 404, "not_found")
    assert_problem(auth_client.get(f"/api/v1/orders/{theirs}/refunds"), 404, "not_found")
    assert_problem(refund(auth_client, str(uuid.uuid4()), {"amount": 100}), 404, "not_found")


@pytest.mark.django_db
def test_the_list_is_paginated_newest_first(payments, auth_client):
    order_id = paid_order(auth_client)
    made = [refund(auth_client, order_id, {"amount": 100}).json()["id"] for _ in range(3)]
    page = auth_client.get(f"/api/v1/orders/{order_id}/refunds", {"page_size": 2}).json()
    assert page["count"] == 3
    assert [r["id"] for r in page["results"]] == made[::-1][:2]
    assert page["next"] is not None
    assert_problem(
        auth_client.get(f"/api/v1/orders/{order_id}/refunds", {"page_size": 0}), 400, "invalid"
    )


@pytest.mark.django_db
@pytest.mark.usefixtures("payments")
def test_refunds_are_rate_limited_per_user(settings, user, make_user, limiter_with_clock):
    ratelimit_settings(settings, policies={"orders_refund": {"capacity": 2, "refill_rate": 0.5}})
    client = client_for(user)
    order_id = paid_order(client)
    for _ in range(2):
        assert refund(client, order_id, {"amount": 10}).status_code == 201
    body = assert_problem(refund(client, order_id, {"amount": 10}), 429, "rate_limited")
    assert body["violated-policies"] == ["orders_refund"]
    assert client.get(f"/api/v1/orders/{order_id}/refunds").status_code == 200  # GET: not limited
    other = client_for(make_user()[0])
    assert refund(other, paid_order(other), {"amount": 10}).status_code == 201


@pytest.mark.slow
@pytest.mark.usefixtures("no_rate_limits")
@pytest.mark.parametrize("provider", ["healthy", "down"])
@pytest.mark.django_db(transaction=True)
def test_sixteen_concurrent_refunds_of_300_on_1000_accept_at_most_three(
    payments, user, wide_request_pool, provider, capsys
):
    token = Token.objects.create(user=user).key
    order_id = paid_order(client_with_token(token))
    if provider == "down":
        payments.set_faults(down=True)
    else:  # keep each refund in flight a while, well within the request-path budget
        budget_ms = get_policy("payments").timeouts.request_budget_s * 1000
        payments.set_faults(latency_ms=int(budget_ms / 4))

    def attempt(_: int):
        response = refund(client_with_token(token), order_id, {"amount": 300}, str(uuid.uuid4()))
        return response.status_code, response.json().get("code") or response.json()["status"]

    answers = Counter(run_threads(16, attempt))
    with capsys.disabled():
        print(f"\n16 concurrent refunds of 300 on 1000 (payments {provider}): {dict(answers)}")
    # Accepted: refunded (201), or pending (202) when payments cannot answer in time.
    accepted = answers[(201, "succeeded")] + answers[(202, "pending")]
    assert set(answers) <= {(201, "succeeded"), (202, "pending"), (422, "refund_exceeds_remaining")}
    assert accepted == 3  # at most three fit; with nothing else refunding, three do
    if provider == "down":
        assert answers[(202, "pending")] == 3
    order = Order.objects.get(id=order_id)
    held = order.refunded_amount + order.refund_pending_amount
    assert held == 900 <= order.total_amount
    assert Refund.objects.filter(order_id=order_id).count() == 3
    assert payments.refund_stats()["refunds"] <= 3


@pytest.mark.django_db
def test_a_crash_after_the_provider_refunded_is_resumed_without_refunding_twice(
    payments, user, monkeypatch
):
    client = client_for(user)
    client.raise_request_exception = False
    order_id = paid_order(client)
    key = str(uuid.uuid4())
    real = refunds.REFUND

    def crash_once(_progress):
        monkeypatch.setattr(refunds, "REFUND", real)
        raise RuntimeError("process died after the provider refunded, before phase 3")

    monkeypatch.setattr(refunds, "REFUND", real.with_phase("refund_settled", crash_once))
    assert refund(client, order_id, {"amount": 300}, key).status_code == 500
    assert Refund.objects.get().status == "pending"  # phase 1 committed, phase 3 never ran
    assert payments.refund_stats()["refunds"] == 1
    retry = refund(client, order_id, {"amount": 300}, key)
    assert (retry.status_code, retry.json()["status"]) == (201, "succeeded")
    assert payments.refund_stats()["refunds"] == 1  # the refund's id as key: replayed
    assert Order.objects.get(id=order_id).refunded_amount == 300


@pytest.mark.django_db
def test_a_declined_refund_fails_and_releases_its_amount(payments, auth_client):
    order_id = paid_order(auth_client)
    payments.reset()  # the provider forgets the charge: it declines refunds of it (404)
    response = refund(auth_client, order_id, {"amount": 300})
    assert (response.status_code, response.json()["status"]) == (201, "failed")
    order = Order.objects.get(id=order_id)
    assert (order.status, order.refunded_amount, order.refund_pending_amount) == ("paid", 0, 0)


@pytest.mark.django_db
def test_a_pending_refund_is_completed_once_however_often_it_is_attempted(payments, auth_client):
    order_id = paid_order(auth_client)
    payments.set_faults(status=503)
    response = refund(auth_client, order_id, {"amount": 300})
    assert (response.status_code, response.json()["status"]) == (202, "pending")
    order = Order.objects.get(id=order_id)
    assert (order.status, order.refunded_amount, order.refund_pending_amount) == ("paid", 0, 300)
    payments.set_faults(status=None)
    refund_id = response.json()["id"]
    for _ in range(3):  # the sweep's task delivered more than once, or racing a retry
        assert refunds.refund_complete_pending(refund_id=refund_id).status == "succeeded"
    order.refresh_from_db()
    assert (order.status, order.refunded_amount, order.refund_pending_amount) == (
        "partially_refunded",
        300,
        0,
    )
    assert payments.refund_stats()["refunds"] == 1


@pytest.mark.slow
@pytest.mark.usefixtures("no_rate_limits")
@pytest.mark.django_db(transaction=True, databases=["default", "background"])
def test_pending_refunds_are_completed_by_a_real_worker_after_payments_recovers(
    payments, settings, user, tmp_path
):
    override_policy(settings, "payments", breaker={"reset_timeout_s": 1.0})
    subscribe(user)
    client = client_for(user)
    order_id = paid_order(client)
    payments.set_faults(down=True)
    keys = [str(uuid.uuid4()) for _ in range(3)]
    for key in keys:
        response = refund(client, order_id, {"amount": 200}, key)
        assert (response.status_code, response.json()["status"]) == (202, "pending")
    # A client retrying with the same key gets the stored 202, not another refund.
    replay = refund(client, order_id, {"amount": 200}, keys[0])
    assert (replay.status_code, replay["Idempotent-Replayed"]) == (202, "true")
    assert Refund.objects.filter(status="pending").count() == 3
    assert Order.objects.get(id=order_id).refund_pending_amount == 600

    payments.set_faults(down=False)
    # The refunds opened the (shared) breaker: the worker's attempts go once it lets them.
    wait_for(lambda: breaker("payments").open_remaining_s() == 0, timeout=5, what="open period")
    Refund.objects.update(next_attempt_at="2000-01-01T00:00Z")  # due now
    log = tmp_path / "worker.log"
    env = child_environment(
        PAYMENTS_URL=payments.api_url,
        PAYMENTS_BREAKER_RESET_S="1",
        ORDERS_DEFERRED_PAYMENT_BASE_S="0.2",
    )
    command = celery_worker_command(
        queues="default", name=f"refunds-{tmp_path.name}", concurrency=2
    )
    from orders.refund_tasks import sweep_pending_refunds

    with running(command, env=env, log_path=log):
        wait_for(lambda: " ready." in log.read_text(errors="replace"), timeout=30, what="worker")
        sweep_pending_refunds.delay()
        wait_for(
            lambda: not Refund.objects.filter(status="pending").exists(),
            timeout=30,
            what="every pending refund completed",
        )
    assert set(Refund.objects.values_list("status", flat=True)) == {"succeeded"}
    order = Order.objects.get(id=order_id)
    assert (order.status, order.refunded_amount, order.refund_pending_amount) == (
        "partially_refunded",
        600,
        0,
    )
    assert payments.refund_stats()["refunds"] == 3
    assert OutboxEvent.objects.filter(type="order.refunded").count() == 3
    app.control.purge()


@pytest.mark.slow
@pytest.mark.usefixtures("no_rate_limits")
@pytest.mark.django_db(transaction=True)
def test_concurrent_copies_with_one_key_make_one_refund(payments, user, wide_request_pool):
    token = Token.objects.create(user=user).key
    order_id = paid_order(client_with_token(token))
    budget_ms = get_policy("payments").timeouts.request_budget_s * 1000
    payments.set_faults(latency_ms=int(budget_ms / 3))  # keep the first copy in flight
    key = str(uuid.uuid4())

    def attempt(_: int):
        response = refund(client_with_token(token), order_id, {"amount": 300}, key)
        return response.status_code, response.get("Idempotent-Replayed"), response.json().get("id")

    results = run_threads(12, attempt)
    answers = Counter((status, replayed) for status, replayed, _ in results)
    # 201 refunded, or 202 pending if payments did not answer within the request budget.
    first = [(s, r) for s, r in answers if r is None and s in (201, 202)]
    assert len(first) == 1, answers
    assert answers[first[0]] == 1, answers
    assert set(answers) <= {first[0], (first[0][0], "true"), (409, None)}
    refund_row = Refund.objects.get()
    assert {i for status, _, i in results if status < 300} == {str(refund_row.id)}
    order = Order.objects.get(id=order_id)
    assert order.refunded_amount + order.refund_pending_amount == 300
    assert set(payments.refund_requests_by_key()) == {f"refund-{refund_row.id}"}


@pytest.mark.django_db
def test_a_sweep_claims_what_it_enqueues_and_releases_what_it_cannot_publish(
    payments, auth_client, monkeypatch
):
    from orders import refund_tasks

    order_id = paid_order(auth_client)
    payments.set_faults(down=True)
    for _ in range(2):
        assert refund(auth_client, order_id, {"amount": 100}).status_code == 202
    Refund.objects.update(next_attempt_at="2000-01-01T00:00Z")
    published: list[str] = []
    monkeypatch.setattr(refund_tasks.complete_pending_refund, "delay", published.append)
    assert refund_tasks.sweep_pending_refunds() == 2
    assert refund_tasks.sweep_pending_refunds() == 0  # claimed: not enqueued twice
    assert sorted(published) == sorted(str(r.id) for r in Refund.objects.all())

    Refund.objects.update(next_attempt_at="2000-01-01T00:00Z")

    def broker_down(_refund_id):
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(refund_tasks.complete_pending_refund, "delay", broker_down)
    with pytest.raises(ConnectionError):
        refund_tasks.sweep_pending_refunds()
    assert refund_tasks.refunds_claim_due(limit=10)  # due again at once


@pytest.mark.django_db
def test_the_admin_lists_refunds_read_only(payments, auth_client, admin_client):
    order_id = paid_order(auth_client)
    refund_id = refund(auth_client, order_id, {"amount": 100}).json()["id"]
    assert admin_client.get("/admin/orders/refund/").status_code == 200
    assert admin_client.get(f"/admin/orders/refund/{refund_id}/change/").status_code == 200
    assert admin_client.get("/admin/orders/refund/add/").status_code == 403


@pytest.mark.django_db(transaction=True)
def test_the_completer_finishes_a_refund_whose_client_never_came_back(
    payments, user, monkeypatch, settings
):
    from resilience.idempotency import idempotency_records_complete_stale, override_clock
    from resilience.models import IdempotencyRecord
    from resilience.tests.idempotency_helpers import FakeClock

    client = client_for(user)
    client.raise_request_exception = False
    order_id = paid_order(client)
    key = str(uuid.uuid4())

    def died(_progress):
        raise SystemExit("the web process died before asking payments")

    real = refunds.REFUND
    monkeypatch.setattr(refunds, "REFUND", real.with_phase("refund", died))
    clock = FakeClock()
    with override_clock(clock), pytest.raises(SystemExit):
        refund(client, order_id, {"amount": 300}, key)
    monkeypatch.setattr(refunds, "REFUND", real)
    made = Refund.objects.get()
    record = IdempotencyRecord.objects.get(key=key)
    assert (record.recovery_point, record.resource_id) == ("refund_created", str(made.id))
    assert payments.refund_stats()["requests"] == 0

    clock.advance(seconds=settings.IDEMPOTENCY_COMPLETER_AFTER_S + 1)
    with override_clock(clock):
        assert idempotency_records_complete_stale()["completed"] == 1
    record.refresh_from_db()
    made.refresh_from_db()
    assert (record.recovery_point, record.response_status, made.status) == (
        "finished", 201, "succeeded",
    )  # fmt: skip
    replay = refund(client, order_id, {"amount": 300}, key)
    assert replay["Idempotent-Replayed"] == "true"
    assert (replay.json()["id"], replay.json()["status"]) == (str(made.id), "succeeded")
    assert payments.refund_requests_by_key() == {f"refund-{made.id}": 1}
