"""The orders endpoints: success paths, ownership and every bad input."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from conftest import client_for
from orders.models import Order
from tests.problems import assert_problem

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("payments", "no_rate_limits")]

ORDERS = "/api/v1/orders"
VALID = {"currency": "EUR", "items": [{"sku": "abc", "quantity": 2, "unit_price": 1250}]}


def create(client, payload=VALID):
    return client.post(ORDERS, payload, format="json")


def test_create_computes_the_total_server_side(auth_client, user):
    payload = {
        "currency": "EUR",
        "total_amount": 1,  # ignored: the server computes the total
        "items": [
            {"sku": "abc", "quantity": 2, "unit_price": 1250},
            {"sku": "x-1", "quantity": 1, "unit_price": 99},
        ],
    }
    response = create(auth_client, payload)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "paid"
    assert body["total_amount"] == 2599
    assert [item["line_total"] for item in body["items"]] == [2500, 99]
    order = Order.objects.get(id=body["id"])
    assert order.owner == user
    assert order.total_amount == 2599


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"items": VALID["items"]}, "currency"),
        ({"currency": "XXX", "items": VALID["items"]}, "currency"),
        ({"currency": "EUR"}, "items"),
        ({"currency": "EUR", "items": []}, "items"),
        ({"currency": "EUR", "items": "abc"}, "items"),
        ({"currency": "EUR", "items": [{"sku": "a", "quantity": 0, "unit_price": 1}]}, "items"),
        ({"currency": "EUR", "items": [{"sku": "a", "quantity": "two", "unit_price": 1}]}, "items"),
        ({"currency": "EUR", "items": [{"sku": "a", "quantity": 1, "unit_price": -5}]}, "items"),
        ({"currency": "EUR", "items": [{"sku": "", "quantity": 1, "unit_price": 5}]}, "items"),
        ({"currency": "EUR", "items": [{"sku": "a b", "quantity": 1, "unit_price": 5}]}, "items"),
        ({"currency": "EUR", "items": [{"quantity": 1, "unit_price": 5}]}, "items"),
        (
            {"currency": "EUR", "items": [{"sku": "a", "quantity": 1, "unit_price": 10**12}]},
            "items",
        ),
        (
            {"currency": "EUR", "items": [{"sku": "a", "quantity": 1, "unit_price": 1}] * 101},
            "items",
        ),
        ({"currency": 978, "items": VALID["items"]}, "currency"),
    ],
)
def test_create_rejects_invalid_input_and_stores_nothing(auth_client, payload, field):
    body = assert_problem(create(auth_client, payload), 400, "invalid")
    assert field in body["errors"]
    assert not Order.objects.exists()


@pytest.mark.parametrize("raw", ["[1, 2]", '"text"', "null", "{"])
def test_create_rejects_non_object_bodies(auth_client, raw):
    response = auth_client.post(ORDERS, data=raw, content_type="application/json")
    assert response.status_code == 400
    assert_problem(response, 400)
    assert not Order.objects.exists()


def test_create_requires_a_token(api_client):
    assert_problem(create(api_client), 401, "not_authenticated")


def test_list_shows_only_the_callers_orders_paginated(auth_client, make_user):
    other, _ = make_user()
    for _ in range(3):
        create(auth_client)
    create(client_for(other))
    body = auth_client.get(ORDERS, {"page_size": 2}).json()
    assert body["count"] == 3
    assert len(body["results"]) == 2
    assert body["next"] is not None
    second = auth_client.get(ORDERS, {"page_size": 2, "page": 2}).json()
    assert len(second["results"]) == 1
    ids = {o["id"] for o in body["results"] + second["results"]}
    assert ids == {str(i) for i in Order.objects.exclude(owner=other).values_list("id", flat=True)}


@pytest.mark.parametrize("page_size", ["0", "101", "-1", "ten"])
def test_list_refuses_a_page_size_out_of_bounds(auth_client, page_size):
    body = assert_problem(auth_client.get(ORDERS, {"page_size": page_size}), 400, "invalid")
    assert "page_size" in body["errors"]


def test_list_page_past_the_end_is_404(auth_client):
    assert_problem(auth_client.get(ORDERS, {"page": 9}), 404, "not_found")


def test_detail_of_own_order(auth_client):
    order_id = create(auth_client).json()["id"]
    response = auth_client.get(f"{ORDERS}/{order_id}")
    assert response.status_code == 200
    assert response.json()["id"] == order_id


def test_detail_of_another_users_order_is_404(auth_client, make_user):
    other, _ = make_user()
    order_id = create(client_for(other)).json()["id"]
    assert_problem(auth_client.get(f"{ORDERS}/{order_id}"), 404, "not_found")
    assert_problem(auth_client.get(f"{ORDERS}/{uuid.uuid4()}"), 404, "not_found")
    assert_problem(auth_client.get(f"{ORDERS}/not-a-uuid"), 404, "not_found")


def test_report_aggregates_by_day_status_and_currency(auth_client, user, make_user):
    from orders.services import order_create, order_transition

    items = VALID["items"]
    for _ in range(2):
        order_create(owner=user, currency="EUR", items=items)
    paid = order_create(owner=user, currency="EUR", items=items)
    order_transition(order_id=paid.id, to_status="paid")
    order_create(owner=user, currency="USD", items=items)
    old = order_create(owner=user, currency="EUR", items=items)
    Order.objects.filter(id=old.id).update(created_at=timezone.now() - timedelta(days=3))
    order_create(owner=make_user()[0], currency="EUR", items=items)  # never counted

    rows = auth_client.get(f"{ORDERS}/report").json()["rows"]
    today = timezone.now().date().isoformat()
    counts = {
        (r["day"], r["status"], r["currency"]): (r["orders"], r["total_amount"]) for r in rows
    }
    assert counts[(today, "pending", "EUR")] == (2, 5000)
    assert counts[(today, "paid", "EUR")] == (1, 2500)
    assert counts[(today, "pending", "USD")] == (1, 2500)
    assert sum(r["orders"] for r in rows) == 5
    one_day = auth_client.get(f"{ORDERS}/report", {"days": 1}).json()["rows"]
    assert sum(r["orders"] for r in one_day) == 4


@pytest.mark.parametrize("days", ["0", "367", "many"])
def test_report_rejects_bad_days(auth_client, days):
    assert_problem(auth_client.get(f"{ORDERS}/report", {"days": days}), 400, "invalid")
