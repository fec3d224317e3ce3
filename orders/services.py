"""Writes for orders. Each service is one transaction on the current workload's alias."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.db import transaction

from common.errors import ConflictError
from orders.models import ORDER_TRANSITIONS, Order, OrderItem, OrderStatus
from resilience.db_routing import current_alias


class InvalidTransitionError(ConflictError):
    code = "invalid_order_transition"
    title = "Order cannot change to that status"


def order_create(*, owner: Any, currency: str, items: Iterable[Mapping[str, Any]]) -> Order:
    """Create a ``pending`` order; the total is computed here, never taken from the client."""
    lines = [
        OrderItem(sku=item["sku"], quantity=item["quantity"], unit_price=item["unit_price"])
        for item in items
    ]
    with transaction.atomic(using=current_alias()):
        order = Order.objects.create(
            owner=owner, currency=currency, total_amount=sum(line.line_total for line in lines)
        )
        for line in lines:
            line.order = order
        OrderItem.objects.bulk_create(lines)
    return order


def order_transition(*, order_id: Any, to_status: str) -> Order:
    """Move an order to ``to_status`` if the state machine allows it from its current one.

    A conditional UPDATE is the check and the write in one statement, so two concurrent
    transitions can never both succeed from the same state.
    """
    allowed_from = [src for src, targets in ORDER_TRANSITIONS.items() if to_status in targets]
    alias = current_alias()
    with transaction.atomic(using=alias):
        updated = Order.objects.filter(id=order_id, status__in=allowed_from).update(
            status=to_status
        )
        order = Order.objects.get(id=order_id)
    if not updated and order.status != to_status:
        raise InvalidTransitionError(
            f"An order in status {order.status!r} cannot become {to_status!r}."
        )
    return order


__all__ = ["InvalidTransitionError", "OrderStatus", "order_create", "order_transition"]
