"""The order state machine: allowed moves succeed, the rest are 409-class errors."""

from __future__ import annotations

import pytest

from orders.models import ORDER_TRANSITIONS, OrderStatus
from orders.services import InvalidTransitionError, order_create, order_transition

pytestmark = pytest.mark.django_db

ITEMS = [{"sku": "abc", "quantity": 1, "unit_price": 100}]


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        (["paid"], True),
        (["pending_payment", "paid"], True),
        (["pending_payment", "failed"], True),
        (["cancelled"], True),
        (["paid", "cancelled"], False),
        (["failed", "paid"], False),
        (["pending_payment", "pending"], False),
    ],
)
def test_transitions_follow_the_table(user, path, allowed):
    order = order_create(owner=user, currency="EUR", items=ITEMS)
    *head, last = path
    for status in head:
        order_transition(order_id=order.id, to_status=status)
    if allowed:
        assert order_transition(order_id=order.id, to_status=last).status == last
    else:
        with pytest.raises(InvalidTransitionError):
            order_transition(order_id=order.id, to_status=last)


def test_repeating_a_transition_is_idempotent(user):
    order = order_create(owner=user, currency="EUR", items=ITEMS)
    order_transition(order_id=order.id, to_status="paid")
    assert order_transition(order_id=order.id, to_status="paid").status == "paid"


def test_every_status_is_in_the_table():
    assert set(ORDER_TRANSITIONS) == set(OrderStatus.values)
    for targets in ORDER_TRANSITIONS.values():
        assert targets <= set(OrderStatus.values)
