"""Finish an order placement whose client never came back (brandur's completer).

The idempotency completer runs ``ORDER_PLACEMENT`` for ``orders.create`` records left
mid-way (a crashed process, a client that gave up), resuming from the recorded point
exactly as a client retry would; the answer it stores is that client's replay.
"""

from __future__ import annotations

from orders.models import Order
from orders.serializers import OrderOutputSerializer
from orders.services import ORDER_PLACEMENT
from resilience.idempotency import StoredResponse


def stored_order_response(order: Order) -> StoredResponse:
    """The 201 of a placed order, as ``orders.apis.order_created_response`` renders it."""
    return StoredResponse.json(
        201, OrderOutputSerializer(order).data, headers={"Location": f"/api/v1/orders/{order.id}"}
    )


complete_order_create = ORDER_PLACEMENT.completer(respond=stored_order_response)
