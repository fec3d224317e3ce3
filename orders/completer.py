"""Finish an order placement whose client never came back (brandur's completer).

The idempotency completer calls this for ``orders.create`` records left mid-way (a
crashed process, a client that gave up). It resumes from the recorded point exactly as
a client retry would, and the response it returns is stored for that client's replay.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model

from orders import services
from orders.serializers import OrderOutputSerializer
from resilience.idempotency import IdempotencyContext, StoredResponse


def complete_order_create(ctx: IdempotencyContext) -> StoredResponse | None:
    """Resume the placement; ``None`` (leave it) when it never created the order."""
    if ctx.recovery_point == "started":
        return None
    owner = get_user_model().objects.get(pk=ctx.principal_id)
    # Items and currency are not needed to resume: the order exists from phase 1.
    order = services.order_place(owner=owner, currency="", items=[], recovery=ctx)
    return StoredResponse.json(
        201, OrderOutputSerializer(order).data, headers={"Location": f"/api/v1/orders/{order.id}"}
    )
