"""Postgres down: recent reads are answered from Redis, marked stale; writes get 503."""

from __future__ import annotations

import uuid
from contextlib import contextmanager

import pytest
from django.db import OperationalError

from conftest import client_for
from orders.models import Order
from orders.services import order_create
from resilience.breakers import breaker
from resilience.stale import read_through
from tests.problems import assert_problem

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_rate_limits")]

ITEMS = [{"sku": "abc", "quantity": 1, "unit_price": 700}]


@contextmanager
def postgres_down():
    """The postgres breaker open: no query reaches the database until it closes."""
    breaker("postgres").force_open()
    try:
        yield
    finally:
        breaker("postgres").close()


def test_an_order_read_before_the_outage_is_served_stale(user):
    client = client_for(user)
    seen = order_create(owner=user, currency="EUR", items=ITEMS)
    never_read = order_create(owner=user, currency="EUR", items=ITEMS)
    fresh = client.get(f"/api/v1/orders/{seen.id}")
    assert fresh.status_code == 200
    assert "X-Degraded" not in fresh

    with postgres_down():
        stale = client.get(f"/api/v1/orders/{seen.id}")
        unknown = client.get(f"/api/v1/orders/{never_read.id}")
        write = client.post("/api/v1/orders", {"currency": "EUR", "items": ITEMS}, format="json")
    assert stale.status_code == 200
    assert stale.json() == fresh.json()
    assert stale["X-Degraded"] == "stale"
    assert int(stale["Age"]) >= 0
    assert_problem(unknown, 503, "dependency_unavailable")
    assert_problem(write, 503, "dependency_unavailable")


def test_a_page_of_the_list_read_before_the_outage_is_served_stale(user):
    client = client_for(user)
    for _ in range(3):
        order_create(owner=user, currency="EUR", items=ITEMS)
    first_page = client.get("/api/v1/orders?page_size=2")
    assert first_page.status_code == 200
    assert "X-Degraded" not in first_page

    with postgres_down():
        stale = client.get("/api/v1/orders?page_size=2")
        other_page = client.get("/api/v1/orders?page_size=2&page=2")
    assert stale.status_code == 200
    assert stale.json() == first_page.json()
    assert stale["X-Degraded"] == "stale"
    assert_problem(other_page, 503, "dependency_unavailable")  # never served: no copy


def test_the_list_copy_is_per_user(user, make_user):
    order_create(owner=user, currency="EUR", items=ITEMS)
    assert client_for(user).get("/api/v1/orders").json()["count"] == 1
    other = client_for(make_user()[0])
    assert other.get("/api/v1/orders").json()["count"] == 0
    with postgres_down():
        stale = other.get("/api/v1/orders")
    assert stale["X-Degraded"] == "stale"
    assert stale.json()["count"] == 0


def _failing_read():
    raise OperationalError("connection refused")


def test_the_baseline_serves_no_stale_copy(settings):
    """RESILIENCE_ENABLED=false is the service without the patterns: the failure shows."""
    key = f"stale-test:baseline:{uuid.uuid4()}"
    assert read_through(key, lambda: "fresh", fresh_s=0, stale_s=60).value == "fresh"
    assert read_through(key, _failing_read, fresh_s=0, stale_s=60).stale
    settings.RESILIENCE_ENABLED = False
    with pytest.raises(OperationalError):
        read_through(key, _failing_read, fresh_s=0, stale_s=60)


def test_the_report_is_reused_while_fresh_and_served_stale_on_outage(user, settings):
    client = client_for(user)
    order_create(owner=user, currency="EUR", items=ITEMS)
    first = client.get("/api/v1/orders/report").json()
    order_create(owner=user, currency="EUR", items=ITEMS)
    # Within ORDERS_REPORT_FRESH_S the expensive query is not run again.
    assert client.get("/api/v1/orders/report").json() == first
    settings.ORDERS_REPORT_FRESH_S = 0  # the copy is no longer fresh, only stale
    with postgres_down():
        stale = client.get("/api/v1/orders/report")
    assert stale.status_code == 200
    assert stale.json() == first
    assert stale["X-Degraded"] == "stale"


def test_the_report_cache_is_per_user(user, make_user):
    order_create(owner=user, currency="EUR", items=ITEMS)
    mine = client_for(user).get("/api/v1/orders/report").json()
    theirs = client_for(make_user()[0]).get("/api/v1/orders/report").json()
    assert sum(r["orders"] for r in mine["rows"]) == 1
    assert theirs["rows"] == []


def test_a_logged_out_token_is_not_recognised_during_an_outage(user):
    client = client_for(user)
    assert client.get("/api/v1/auth/me").status_code == 200  # cached for outages
    assert client.post("/api/v1/auth/logout").status_code == 204
    with postgres_down():
        response = client.get("/api/v1/orders")
    assert response.status_code == 503  # unknown without Postgres, never let through
    assert Order.objects.count() == 0
