"""Idempotency on the real POST /api/v1/orders, with the real payments service.

One key, fifty concurrent identical requests: one order, one authorisation at payments.
A crash between phases: the retry with the same key finishes the order once.
"""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from rest_framework.authtoken.models import Token

from config.celery import app
from conftest import client_for
from orders import services
from orders.models import Order
from resilience.policies import get_policy
from tests.concurrency import client_with_token, run_threads
from webhooks.models import OutboxEvent

pytestmark = pytest.mark.usefixtures("no_rate_limits", "no_load_shedding")

ORDER = {"currency": "EUR", "items": [{"sku": "abc", "quantity": 2, "unit_price": 1250}]}


def post(client, key: str, body=ORDER):
    return client.post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY=key)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_duplicates_make_one_order_and_one_charge(
    payments, user, wide_request_pool, capsys
):
    from webhooks.services import endpoint_create

    # A subscriber, so the order's events land in the outbox (fan-out happens at emit).
    endpoint_create(
        owner=user, url="http://127.0.0.1:9/hooks", event_types=["order.created", "order.paid"]
    )
    token = Token.objects.create(user=user).key
    key = str(uuid.uuid4())
    # Keep the first request in flight, well within the request-path budget for payments.
    budget_ms = get_policy("payments").timeouts.request_budget_s * 1000
    payments.set_faults(latency_ms=int(budget_ms / 3))

    def attempt(_: int):
        response = post(client_with_token(token), key)
        return response.status_code, response.get("Idempotent-Replayed"), response.json().get("id")

    results = run_threads(50, attempt)
    answers = Counter((status, replayed) for status, replayed, _ in results)
    with capsys.disabled():
        print(f"\n50 duplicates on POST /api/v1/orders: {dict(answers)}")
    assert set(answers) <= {(201, None), (201, "true"), (409, None)}
    assert answers[(201, None)] == 1
    assert Order.objects.count() == 1
    order = Order.objects.get()
    assert order.status == "paid"
    assert {order_id for status, _, order_id in results if status == 201} == {str(order.id)}
    assert payments.stats()["authorizations"] == 1
    assert payments.requests_by_key() == {f"order-{order.id}": 1}
    events = sorted(OutboxEvent.objects.values_list("type", flat=True))
    assert events == ["order.created", "order.paid"]  # one of each, never one per duplicate
    app.control.purge()  # no worker here: drop the delivery messages this test published


@pytest.mark.django_db
def test_same_key_other_body_is_422_and_other_users_are_independent(payments, user, make_user):
    key = str(uuid.uuid4())
    mine = client_for(user)
    assert post(mine, key).status_code == 201
    other_body = {**ORDER, "currency": "USD"}
    response = post(mine, key, other_body)
    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_mismatch"
    theirs = post(client_for(make_user()[0]), key)
    assert theirs.status_code == 201
    assert theirs.get("Idempotent-Replayed") is None
    assert Order.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_crash_after_the_charge_is_resumed_without_charging_twice(payments, user, monkeypatch):
    client = client_for(user)
    client.raise_request_exception = False
    key = str(uuid.uuid4())
    real = services.ORDER_PLACEMENT

    def crash_once(progress):
        monkeypatch.setattr(services, "ORDER_PLACEMENT", real)
        raise RuntimeError("process died after the authorisation, before phase 3")

    monkeypatch.setattr(services, "ORDER_PLACEMENT", real.with_phase("payment_settled", crash_once))
    first = post(client, key)
    assert first.status_code == 500
    order = Order.objects.get()
    assert order.status == "pending"  # phase 1 committed, phase 3 never ran
    assert payments.stats()["authorizations"] == 1  # the charge happened

    retry = post(client, key)
    assert retry.status_code == 201
    assert retry.json()["id"] == str(order.id)
    assert retry.json()["status"] == "paid"
    assert Order.objects.count() == 1
    assert payments.stats()["authorizations"] == 1  # same payment key: no second charge
    replay = post(client, key)
    assert replay.get("Idempotent-Replayed") == "true"
    assert replay.json() == retry.json()


@pytest.mark.django_db(transaction=True)
def test_the_completer_finishes_a_placement_whose_client_never_came_back(
    payments, user, monkeypatch, settings
):
    from resilience.idempotency import idempotency_records_complete_stale, override_clock
    from resilience.models import IdempotencyRecord
    from resilience.tests.idempotency_helpers import FakeClock

    client = client_for(user)
    client.raise_request_exception = False
    key = str(uuid.uuid4())

    def died(progress):
        raise SystemExit("the web process died before asking payments")

    real = services.ORDER_PLACEMENT
    monkeypatch.setattr(services, "ORDER_PLACEMENT", real.with_phase("authorize", died))
    clock = FakeClock()
    with override_clock(clock), pytest.raises(SystemExit):
        post(client, key)
    monkeypatch.setattr(services, "ORDER_PLACEMENT", real)
    order = Order.objects.get()
    record = IdempotencyRecord.objects.get(key=key)
    assert (record.recovery_point, record.resource_id) == ("order_created", str(order.id))
    assert payments.stats()["authorizations"] == 0

    clock.advance(seconds=settings.IDEMPOTENCY_COMPLETER_AFTER_S + 1)
    with override_clock(clock):
        assert idempotency_records_complete_stale()["completed"] == 1
    record.refresh_from_db()
    order.refresh_from_db()
    assert (record.recovery_point, record.response_status, order.status) == (
        "finished", 201, "paid",
    )  # fmt: skip
    assert payments.requests_by_key() == {f"order-{order.id}": 1}
    replay = post(client, key)
    assert replay.get("Idempotent-Replayed") == "true"
    assert replay.json()["id"] == str(order.id)
    assert replay.json()["status"] == "paid"
