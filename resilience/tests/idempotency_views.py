"""Test-only views for the idempotency machinery: a phased handler with fault hooks.

The handler follows the three phases of ``POST /api/v1/orders`` (DESIGN.md section 3) on
the real ``Order`` table (read-only use of the orders app): phase 1 creates the order and
records ``order_created`` in one transaction; phase 2 "authorises" the payment (a call
recorded in ``AUTHORIZATIONS`` with a key derived from the order, standing for the
payments service) and marks the order paid with ``payment_authorized`` in one
transaction. ``FAULTS`` injects failures between phases.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import transaction
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from orders.models import Order, OrderStatus
from resilience.db_routing import current_alias
from resilience.idempotency import (
    STARTED,
    IdempotencyContext,
    StoredResponse,
    downstream_key,
    idempotent,
)

SCOPE = "tests.orders.create"
FAULTS: dict[str, Callable[[], None]] = {}
AUTHORIZATIONS: list[tuple[str, str]] = []  # (order id, idempotency key sent to payments)
_authorizations_lock = threading.Lock()


def fault(name: str) -> None:
    hook = FAULTS.get(name)
    if hook is not None:
        hook()


def authorize_payment(order: Order) -> None:
    with _authorizations_lock:
        AUTHORIZATIONS.append((str(order.id), downstream_key("order", order.id, "authorize")))


def run_phases(ctx: IdempotencyContext | None, *, owner: Any, amount: int, currency: str) -> Order:
    """Run the phases not yet done according to ``ctx.recovery_point``."""
    point = ctx.recovery_point if ctx is not None else STARTED
    if point == STARTED:
        with transaction.atomic(using=current_alias()):
            order = Order.objects.create(owner=owner, currency=currency, total_amount=amount)
            if ctx is not None:
                ctx.advance("order_created", resource_id=order.id)
        point = "order_created"
    else:
        order = Order.objects.get(id=ctx.resource_id)
    fault("after_order_created")
    if point == "order_created":
        authorize_payment(order)  # no transaction open across the "HTTP call"
        with transaction.atomic(using=current_alias()):
            Order.objects.filter(id=order.id, status=OrderStatus.PENDING).update(
                status=OrderStatus.PAID
            )
            if ctx is not None:
                ctx.advance("payment_authorized")
    fault("after_payment_authorized")
    return Order.objects.get(id=order.id)


def order_body(order: Order) -> dict[str, Any]:
    return {
        "id": str(order.id),
        "status": order.status,
        "currency": order.currency,
        "total_amount": order.total_amount,
        "created_at": order.created_at.isoformat(),
    }


def order_location(order: Order) -> str:
    return f"/api/v1/orders/{order.id}"


class OrderInput(serializers.Serializer):
    currency = serializers.ChoiceField(choices=["EUR", "USD"])
    amount = serializers.IntegerField(min_value=1)


class PhasedOrderApi(APIView):
    @idempotent(scope=SCOPE)
    def post(self, request: Request) -> Response:
        data = OrderInput(data=request.data)
        data.is_valid(raise_exception=True)
        fault("before_phases")
        order = run_phases(request.idempotency, owner=request.user, **data.validated_data)
        return Response(
            order_body(order),
            status=201,
            # RateLimit stands for a per-request header that must never be replayed.
            headers={"Location": order_location(order), "RateLimit": '"burst";r=9;t=1'},
        )


class OtherScopeApi(APIView):
    @idempotent(scope="tests.other")
    def post(self, request: Request) -> Response:
        return Response({"ok": True})


class RequiredKeyApi(APIView):
    @idempotent(scope="tests.required", required=True)
    def post(self, request: Request) -> Response:
        return Response({"ok": True})


def complete_order(ctx: IdempotencyContext) -> StoredResponse | None:
    """The test completer: finish what a crashed request left, as a resumed one would."""
    if ctx.recovery_point == STARTED:
        return None  # nothing durable happened; the client's retry or the purge decides
    order = run_phases(ctx, owner=None, amount=0, currency="")
    return StoredResponse.json(201, order_body(order), headers={"Location": order_location(order)})
