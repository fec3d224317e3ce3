"""The outbox and one delivery attempt at a time, in this process, against a real receiver.

The worker processes, the broker and the schedule over time are in
tests/test_webhooks_workers.py; here each attempt is one call of the service.
"""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from conftest import client_for
from orders.models import Order, OrderStatus
from resilience.breakers import breaker
from webhooks import services
from webhooks.models import Delivery, DeliveryStatus, Endpoint, OutboxEvent
from webhooks.tests.conftest import emit, make_endpoint

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_rate_limits")]

ORDER = {"currency": "EUR", "items": [{"sku": "abc", "quantity": 2, "unit_price": 1250}]}


def attempt(delivery) -> str:
    return services.delivery_attempt(delivery_id=delivery.id)


def make_due(delivery) -> None:
    Delivery.objects.filter(id=delivery.id).update(next_attempt_at=timezone.now())


# --- The outbox -------------------------------------------------------------------------


def test_an_order_emits_created_and_paid_to_subscribed_endpoints_only(
    payments, user, receiver, published
):
    subscribed = make_endpoint(user, receiver, event_types=["order.created", "order.paid"])
    make_endpoint(user, receiver, path="/hooks/b", event_types=["order.payment_failed"])
    response = client_for(user).post("/api/v1/orders", ORDER, format="json")
    assert response.status_code == 201
    events = OutboxEvent.objects.order_by("created_at")
    assert [e.type for e in events] == ["order.created", "order.paid"]
    assert events[1].payload["data"]["order"] == {
        "id": response.json()["id"],
        "status": "paid",
        "currency": "EUR",
        "total_amount": 2500,
    }
    assert events[1].payload["type"] == "order.paid"
    assert set(Delivery.objects.values_list("endpoint_id", flat=True)) == {subscribed.id}


def test_no_subscriber_no_row(user):
    assert emit(user, "order.paid") is None
    assert not OutboxEvent.objects.exists()


def test_a_rolled_back_change_emits_nothing(user, receiver):
    make_endpoint(user, receiver)

    def change_that_fails() -> None:
        with transaction.atomic():
            services.outbox_emit(event_type="order.created", payload={}, owner=user)
            raise ZeroDivisionError  # the caller's transaction fails after emitting

    with pytest.raises(ZeroDivisionError):
        change_that_fails()
    assert not OutboxEvent.objects.exists()
    assert not Delivery.objects.exists()


def test_the_same_change_is_emitted_once(user, receiver):
    make_endpoint(user, receiver)
    assert emit(user, dedupe_key="order:1:order.created") is not None
    assert emit(user, dedupe_key="order:1:order.created") is None
    assert OutboxEvent.objects.count() == Delivery.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_emit_outside_a_transaction_is_a_bug(user):
    with pytest.raises(RuntimeError, match="inside the caller's transaction"):
        services.outbox_emit(event_type="order.created", payload={}, owner=user)


@pytest.mark.django_db(transaction=True)
def test_after_commit_the_relay_publishes_and_marks(user, receiver, published):
    endpoint = make_endpoint(user, receiver)
    emit(user)
    delivery = Delivery.objects.get(endpoint=endpoint)
    assert published == [str(delivery.id)]
    assert delivery.enqueued_at is not None


@pytest.mark.django_db(transaction=True)
def test_a_dead_broker_leaves_rows_for_the_sweep_and_pauses_the_relay(
    user, receiver, monkeypatch, settings
):
    from webhooks.tasks import deliver

    endpoint = make_endpoint(user, receiver)
    calls = []

    def refuse(args, **_):
        calls.append(args[0])
        raise ConnectionError("broker down")

    monkeypatch.setattr(deliver, "apply_async", refuse)
    monkeypatch.setattr(services, "_publish_paused_until", 0.0)
    emit(user)
    emit(user)  # within the pause: not even tried
    assert len(calls) == 1
    assert Delivery.objects.filter(endpoint=endpoint, enqueued_at__isnull=True).count() == 2
    # The sweep tries regardless of the pause, and un-marks what it could not publish.
    assert services.outbox_sweep() == 0
    assert Delivery.objects.filter(enqueued_at__isnull=True).count() == 2
    sent = []
    monkeypatch.setattr(deliver, "apply_async", lambda args, **_: sent.append(args[0]))
    assert services.outbox_sweep() == 2
    assert Delivery.objects.filter(enqueued_at__isnull=True).count() == 0
    assert services.outbox_sweep() == 0  # published once, not again
    # ...unless its message seems lost.
    settings.WEBHOOKS_REDISPATCH_AFTER_S = 0
    assert services.outbox_sweep() == 2


def test_the_sweep_publishes_only_due_deliveries(user, receiver, published):
    make_endpoint(user, receiver)
    emit(user)
    emit(user)
    later = timezone.now() + timedelta(minutes=5)
    Delivery.objects.filter(id=Delivery.objects.first().id).update(next_attempt_at=later)
    assert services.outbox_sweep() == 1
    assert len(published) == 1


# --- One attempt ----------------------------------------------------------------------------


def test_a_delivery_is_signed_and_received_once(user, receiver, published):
    endpoint = make_endpoint(user, receiver)
    event = emit(user, payload={"hello": "world"})
    delivery = Delivery.objects.get(endpoint=endpoint)
    assert attempt(delivery) == "succeeded"
    assert attempt(delivery) == "skipped"  # a duplicate message finds nothing to claim
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("succeeded", 1, 204)
    assert delivery.last_latency_ms is not None
    assert receiver.stats() == {
        "received": 1,
        "unique": 1,
        "duplicates": 0,
        "rejected": 0,
        "faulted": 0,
    }
    (received,) = receiver.events()
    assert received["id"] == str(event.id)
    assert received["body"]["data"] == {"hello": "world"}
    assert [a.outcome for a in delivery.attempt_log.all()] == ["succeeded"]


def test_a_wrong_secret_is_a_refusal_dead_lettered(user, receiver, published):
    endpoint = make_endpoint(user, receiver)
    receiver.set_secret("/hooks/a", services.generate_secret())
    emit(user)
    delivery = Delivery.objects.get(endpoint=endpoint)
    assert attempt(delivery) == "dead"
    delivery.refresh_from_db()
    assert (delivery.status, delivery.last_status_code) == ("dead", 401)
    assert receiver.stats()["rejected"] == 1


def test_retry_after_is_honoured(user, receiver, published):
    endpoint = make_endpoint(user, receiver)
    receiver.set_faults(status=503, retry_after=120)
    emit(user)
    delivery = Delivery.objects.get(endpoint=endpoint)
    before = timezone.now()
    assert attempt(delivery) == "retry"
    delivery.refresh_from_db()
    assert delivery.status == "pending"
    assert delivery.next_attempt_at >= before + timedelta(seconds=120)
    assert delivery.last_status_code == 503
    assert attempt(delivery) == "skipped"  # not due yet


def test_retries_are_bounded_then_dead_lettered_and_replayable(user, receiver, published, settings):
    settings.WEBHOOKS_MAX_ATTEMPTS = 3
    endpoint = make_endpoint(user, receiver)
    receiver.set_faults(status=500)
    emit(user)
    delivery = Delivery.objects.get(endpoint=endpoint)
    outcomes = []
    for _ in range(3):
        make_due(delivery)
        outcomes.append(attempt(delivery))
    assert outcomes == ["retry", "retry", "dead"]
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("dead", 3)
    assert delivery.dead_at is not None

    receiver.set_faults(status=None)
    out = io.StringIO()
    call_command("webhooks", "dead", stdout=out)
    assert str(delivery.id) in out.getvalue()
    call_command("webhooks", "replay", "--delivery", str(delivery.id), stdout=out)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("pending", 0)
    assert attempt(delivery) == "succeeded"
    # The replay keeps the event id, so a receiver that saw an earlier attempt dedupes it.
    assert receiver.events()[0]["id"] == str(delivery.event_id)


def test_replay_every_dead_letter_from_the_command(user, receiver, published):
    endpoint = make_endpoint(user, receiver)
    receiver.set_faults(status=400)
    emit(user)
    emit(user)
    for delivery in Delivery.objects.filter(endpoint=endpoint):
        assert attempt(delivery) == "dead"
    out = io.StringIO()
    call_command("webhooks", "replay", "--dead", stdout=out)
    assert "replayed 2" in out.getvalue()
    assert Delivery.objects.filter(status="pending").count() == 2


def test_replay_from_the_admin_action(admin_client, user, receiver, published):
    endpoint = make_endpoint(user, receiver)
    receiver.set_faults(status=422)
    emit(user)
    delivery = Delivery.objects.get(endpoint=endpoint)
    assert attempt(delivery) == "dead"
    listing = admin_client.get("/admin/webhooks/delivery/", {"status__exact": "dead"})
    assert str(delivery.id) in listing.content.decode()
    response = admin_client.post(
        "/admin/webhooks/delivery/",
        {"action": "replay", "_selected_action": [str(delivery.id)]},
    )
    assert response.status_code == 302
    delivery.refresh_from_db()
    assert delivery.status == "pending"
    detail = admin_client.get(f"/admin/webhooks/delivery/{delivery.id}/change/")
    assert detail.status_code == 200
    assert (
        endpoint.secret
        not in admin_client.get(f"/admin/webhooks/endpoint/{endpoint.id}/change/").content.decode()
    )


def test_410_gone_disables_the_endpoint(user, receiver, published):
    endpoint = make_endpoint(user, receiver)
    receiver.set_faults(status=410)
    emit(user)
    emit(user)
    first, second = Delivery.objects.filter(endpoint=endpoint).order_by("created_at")
    assert attempt(first) == "gone"
    endpoint.refresh_from_db()
    assert (endpoint.is_active, endpoint.disabled_reason) == (False, "gone")
    assert set(Delivery.objects.values_list("status", flat=True)) == {"failed"}
    assert attempt(second) == "skipped"
    assert receiver.stats()["received"] == 1
    # No new deliveries for a disabled endpoint; replay is refused.
    assert emit(user) is None
    with pytest.raises(services.WebhookReplayError):
        services.delivery_replay(delivery_id=first.id)


def test_an_open_breaker_defers_without_spending_an_attempt(user, receiver, published):
    endpoint = make_endpoint(user, receiver)
    emit(user)
    delivery = Delivery.objects.get(endpoint=endpoint)
    breaker(services.target_dependency(endpoint.url)).force_open()
    before = timezone.now()
    assert attempt(delivery) == "deferred"
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.lease_id) == ("pending", 0, None)
    # Forced open: told to come back after an open period (refused again until an
    # operator closes the breaker, then resumed within one period, not in a year).
    reset_s = breaker(services.target_dependency(endpoint.url)).reset_timeout
    assert delivery.next_attempt_at >= before + timedelta(seconds=reset_s)
    assert not delivery.attempt_log.exists()
    assert receiver.stats()["received"] == 0


def test_consecutive_failures_open_the_hosts_breaker(user, receiver, published, settings):
    endpoint = make_endpoint(user, receiver)
    receiver.set_faults(down=True)
    for _ in range(6):
        emit(user)
    outcomes = [attempt(d) for d in Delivery.objects.filter(endpoint=endpoint)]
    assert outcomes == ["retry"] * 5 + ["deferred"]  # fail_max 5 for the webhook template
    assert breaker(services.target_dependency(endpoint.url)).current_state == "open"


def test_a_deleted_endpoints_pending_deliveries_fail(user, receiver, published):
    endpoint = make_endpoint(user, receiver)
    emit(user)
    services.endpoint_delete(owner=user, endpoint_id=endpoint.id)
    delivery = Delivery.objects.get(endpoint=endpoint)
    assert delivery.status == DeliveryStatus.FAILED
    assert Endpoint.objects.get(id=endpoint.id).disabled_reason == "deleted"


def test_full_jitter_schedule_is_bounded(settings):
    settings.WEBHOOKS_RETRY_BASE_S = 10
    settings.WEBHOOKS_RETRY_CAP_S = 100
    for attempts, ceiling in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (12, 100)]:
        delays = [services.retry_delay_s(attempts) for _ in range(200)]
        assert min(delays) >= 0
        assert max(delays) <= ceiling
        assert max(delays) > ceiling / 2  # spread over the whole range, not a constant


def test_deferred_payment_authorised_later_emits_order_paid(payments, user, receiver, published):
    from orders.services import order_authorize_deferred

    make_endpoint(user, receiver, event_types=["order.paid"])
    order = Order.objects.create(
        owner=user,
        currency="EUR",
        total_amount=500,
        status=OrderStatus.PENDING_PAYMENT,
        next_payment_attempt_at=timezone.now() - timedelta(seconds=1),
    )
    assert order_authorize_deferred(order_id=order.id).status == "paid"
    assert list(OutboxEvent.objects.values_list("type", flat=True)) == ["order.paid"]
    assert order_authorize_deferred(order_id=order.id).status == "paid"
    assert OutboxEvent.objects.count() == 1


def test_metrics_show_the_backlog_at_scrape_time(client, user, receiver, published):
    endpoint = make_endpoint(user, receiver)
    emit(user)
    Delivery.objects.filter(endpoint=endpoint).update(
        next_attempt_at=timezone.now() - timedelta(seconds=90)
    )
    text = client.get("/metrics").content.decode()
    lag = next(
        line for line in text.splitlines() if line.startswith("webhooks_outbox_lag_seconds ")
    )
    assert float(lag.split()[1]) >= 90
    assert "webhooks_deliveries_pending 1.0" in text
