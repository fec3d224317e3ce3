"""The metrics behind BeatNotRunning and PendingPaymentTooOld move with what they measure."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from orders.models import Order, OrderStatus
from orders.services import order_create

ITEMS = [{"sku": "abc", "quantity": 1, "unit_price": 700}]


def test_beat_schedules_the_heartbeat_and_the_heartbeat_sets_the_gauge():
    from common.tasks import BEAT_HEARTBEAT, beat_heartbeat

    entry = settings.CELERY_BEAT_SCHEDULE["beat-heartbeat"]
    assert entry == {
        "task": "common.tasks.beat_heartbeat",
        "schedule": settings.BEAT_HEARTBEAT_INTERVAL_S,
    }
    before = time.time()
    ran_at = beat_heartbeat.run()
    assert before <= ran_at <= time.time()
    assert BEAT_HEARTBEAT._value.get() == ran_at


@pytest.mark.django_db
def test_the_oldest_pending_payment_age_is_read_from_postgres(user, client):
    from orders.metrics import PENDING_PAYMENT_OLDEST, refresh_gauges

    refresh_gauges()
    assert PENDING_PAYMENT_OLDEST._value.get() == 0.0  # none pending

    order = order_create(owner=user, currency="EUR", items=ITEMS)
    Order.objects.filter(id=order.id).update(
        status=OrderStatus.PENDING_PAYMENT, created_at=timezone.now() - timedelta(hours=3)
    )
    # A scrape of /metrics refreshes it (the request_started receiver).
    body = client.get("/metrics").content.decode()
    age = PENDING_PAYMENT_OLDEST._value.get()
    assert 3 * 3600 <= age < 3 * 3600 + 60
    assert "orders_pending_payment_oldest_seconds" in body

    Order.objects.filter(id=order.id).update(status=OrderStatus.PAID)
    refresh_gauges()
    assert PENDING_PAYMENT_OLDEST._value.get() == 0.0
