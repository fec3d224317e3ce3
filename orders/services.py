"""Writes for orders. Each phase is one transaction on the current workload's alias.

``order_create`` and ``order_transition`` open no savepoint inside a caller's
transaction (``savepoint=False``): an error in them fails the caller's whole phase
anyway, and the SAVEPOINT and RELEASE were 4 of the 19 round trips of placing an order,
each one a wait on Postgres when it is slow or its host is busy (adr/0014).

Placing an order is a declared operation (``ORDER_PLACEMENT``, resilience.phases) of the
three phases of docs/worst-case-request.md:

1. one transaction: create the order ``pending`` (and its ``order.created`` event);
2. no transaction open: authorise the payment through the resilient client;
3. one transaction: ``paid`` (or ``pending_payment`` when payments is unavailable, or
   ``failed`` when declined) and its event.

The library records the recovery points, resumes a retry with the same idempotency key
after the last one reached, and derives the payment key from the order, so a repeated
authorisation (a resumed request, the deferred retry) returns the same charge.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from orders.models import ORDER_TRANSITIONS, Order, OrderItem, OrderStatus
from orders.payments import PaymentDeclinedError, payments_authorize
from resilience import degrade, metrics, sweeps
from resilience.db_routing import current_alias
from resilience.errors import PolicyRefusal, Refusal
from resilience.idempotency import IdempotencyContext
from resilience.phases import Operation, Progress, atomic, call
from resilience.problems import ConflictError
from webhooks.services import outbox_emit

logger = logging.getLogger(__name__)


class InvalidTransitionError(ConflictError):
    code = "invalid_order_transition"
    title = "Order cannot change to that status"


# The webhook event written in the same transaction as each status change (adr/0006).
ORDER_EVENTS = {
    OrderStatus.PENDING: "order.created",
    OrderStatus.PAID: "order.paid",
    OrderStatus.PENDING_PAYMENT: "order.payment_deferred",
    OrderStatus.FAILED: "order.payment_failed",
}


def _emit_order_event(order: Order) -> None:
    """Stage the event of the order's current status in the webhook outbox.

    Inside the caller's transaction. The dedupe key makes it once per order and status
    even if a transition is re-run (statuses are never re-entered).
    """
    event_type = ORDER_EVENTS.get(order.status)
    if event_type is None:
        return
    outbox_emit(
        event_type=event_type,
        owner=order.owner_id,
        dedupe_key=f"order:{order.id}:{event_type}",
        payload={
            "order": {
                "id": str(order.id),
                "status": order.status,
                "currency": order.currency,
                "total_amount": order.total_amount,
            }
        },
    )


def order_create(*, owner: Any, currency: str, items: Iterable[Mapping[str, Any]]) -> Order:
    """Create a ``pending`` order; the total is computed here, never taken from the client."""
    lines = [
        OrderItem(sku=item["sku"], quantity=item["quantity"], unit_price=item["unit_price"])
        for item in items
    ]
    with transaction.atomic(using=current_alias(), savepoint=False):
        order = Order.objects.create(
            owner=owner, currency=currency, total_amount=sum(line.line_total for line in lines)
        )
        for line in lines:
            line.order = order
        OrderItem.objects.bulk_create(lines)
    return order


def order_transition(*, order_id: Any, to_status: str, **changes: Any) -> Order:
    """Move an order to ``to_status`` if the state machine allows it from its current one.

    A conditional UPDATE is the check and the write in one statement, so two concurrent
    transitions can never both succeed from the same state. ``changes`` are written in
    the same statement.
    """
    allowed_from = [src for src, targets in ORDER_TRANSITIONS.items() if to_status in targets]
    with transaction.atomic(using=current_alias(), savepoint=False):
        updated = Order.objects.filter(id=order_id, status__in=allowed_from).update(
            status=to_status, updated_at=timezone.now(), **changes
        )
        order = Order.objects.get(id=order_id)
    if not updated and order.status != to_status:
        raise InvalidTransitionError(
            f"An order in status {order.status!r} cannot become {to_status!r}."
        )
    return order


def _authorize(order: Order, *, retry: bool) -> tuple[str, dict[str, Any]]:
    """Ask payments; return the status to settle in and the fields to write."""
    try:
        authorization = payments_authorize(
            order_id=order.id,
            amount=order.total_amount,
            currency=order.currency,
            idempotency_key=ORDER_PLACEMENT.downstream_key(order.id),
            retry=retry,
        )
    except PaymentDeclinedError as exc:
        logger.info("payment declined", extra={"order_id": str(order.id), "status": exc.status})
        return OrderStatus.FAILED, {}
    except Refusal as exc:  # payments cannot be asked now: accepted as pending_payment
        degrade.or_raise(exc)
        fields = {"reason": type(exc).__name__}
        if isinstance(exc, PolicyRefusal):  # our own "not now": payments was not even called
            fields["refused_for_s"] = exc.retry_after_s or 0.0
        return OrderStatus.PENDING_PAYMENT, fields
    return OrderStatus.PAID, {"payment_authorization_id": authorization.id}


def _next_attempt_at(attempt: int) -> Any:
    """Full jitter over a capped exponential schedule, for deferred authorisation."""
    base = settings.ORDERS_DEFERRED_PAYMENT_BASE_S
    cap = settings.ORDERS_DEFERRED_PAYMENT_CAP_S
    delay = random.uniform(0, min(cap, base * 2**attempt))  # noqa: S311 - jitter, not crypto
    return timezone.now() + timedelta(seconds=delay)


# --- Placing an order: what each phase does; resilience.phases runs and records them ----
def _create_order(progress: Progress) -> Order:
    """Phase 1: the order, its items and its ``order.created`` event."""
    order = order_create(**progress.inputs)
    _emit_order_event(order)
    return order


def _authorize_payment(progress: Progress) -> tuple[str, dict[str, Any]]:
    """Phase 2, no transaction open: the request path's authorisation, with retries."""
    return _authorize(progress.resource, retry=True)


def _settle(progress: Progress) -> Order:
    """Phase 3: the outcome of the authorisation and its event."""
    order = progress.resource
    status, fields = progress.result
    reason = fields.pop("reason", None)
    fields.pop("refused_for_s", None)
    if status == OrderStatus.PENDING_PAYMENT:
        metrics.DEGRADED_RESPONSES.labels("payments", "pending_payment").inc()
        logger.warning("payment deferred", extra={"order_id": str(order.id), "reason": reason})
        fields["next_payment_attempt_at"] = _next_attempt_at(0)
    order = order_transition(order_id=order.id, to_status=status, **fields)
    _emit_order_event(order)
    return order


ORDER_PLACEMENT = Operation(
    "order",  # the payment key is "order-<id>", from every path (adr/0014)
    load=lambda order_id: Order.objects.get(id=order_id),
    phases=[
        atomic("order_created", _create_order),
        call("authorize", _authorize_payment),
        # Before declared phases, phase 3 recorded its outcome in the point's name.
        atomic(
            "payment_settled",
            _settle,
            formerly=("payment_authorized", "payment_deferred", "payment_declined"),
        ),
    ],
)


def order_place(
    *,
    owner: Any = None,
    currency: str = "",
    items: Iterable[Mapping[str, Any]] = (),
    recovery: IdempotencyContext | None = None,
    respond: Callable[[Order], Any] | None = None,
) -> Any:
    """Create an order and authorise its payment, resuming from ``recovery`` if given.

    Returns ``respond(order)`` (stored as the idempotent answer with the last phase), or
    the order. A resumed placement needs no inputs: the order exists from phase 1.
    """
    return ORDER_PLACEMENT.run(
        recovery=recovery, respond=respond, owner=owner, currency=currency, items=items
    )


def deferred_payments_claim_due(*, limit: int) -> list[Any]:
    """Claim the ``pending_payment`` orders whose next attempt is due, for one sweep.

    Each claimed order's next attempt moves ``ORDERS_DEFERRED_PAYMENT_LEASE_S`` ahead in
    the same statement, so the next sweeps do not enqueue it again while its task waits
    in the queue (at collapse load they did: thousands of copies for a few hundred
    orders). If the task is lost, the order is due again when the lease runs out.
    """
    return sweeps.claim_due(
        Order.objects.filter(status=OrderStatus.PENDING_PAYMENT),
        due_field="next_payment_attempt_at",
        lease_s=settings.ORDERS_DEFERRED_PAYMENT_LEASE_S,
        limit=limit,
    )


def deferred_payments_release(*, order_ids: Iterable[Any]) -> None:
    """Make claimed orders due again at once (their task could not be published)."""
    sweeps.release(
        Order.objects.filter(status=OrderStatus.PENDING_PAYMENT),
        order_ids,
        due_field="next_payment_attempt_at",
    )


def order_authorize_deferred(*, order_id: Any) -> Order:
    """One deferred authorisation attempt for a ``pending_payment`` order.

    A single attempt: this schedule (jittered, in the database) is the retry layer for
    deferred payments, so the HTTP client does not retry on top of it. The order row is
    locked while deciding, so two workers never authorise the same order at once.
    """
    alias = current_alias()
    with transaction.atomic(using=alias):
        order = Order.objects.select_for_update(skip_locked=True).filter(id=order_id).first()
        if order is None or order.status != OrderStatus.PENDING_PAYMENT:
            return order or Order.objects.get(id=order_id)
        # Claim the attempt: push the schedule out so a concurrent sweep skips it.
        Order.objects.filter(id=order.id).update(
            payment_attempts=order.payment_attempts + 1,
            next_payment_attempt_at=_next_attempt_at(order.payment_attempts + 1),
        )
    status, fields = _authorize(order, retry=False)
    reason = fields.pop("reason", None)
    refused_for_s = fields.pop("refused_for_s", None)
    if refused_for_s is not None:
        # The breaker or bulkhead refused: no attempt was made, so none is spent (an
        # outage longer than the schedule must not fail orders); try again when the
        # breaker lets calls through, jittered so the fleet does not come back at once.
        delay = refused_for_s + random.uniform(0, settings.ORDERS_DEFERRED_PAYMENT_BASE_S)  # noqa: S311
        Order.objects.filter(id=order.id, status=OrderStatus.PENDING_PAYMENT).update(
            payment_attempts=order.payment_attempts,
            next_payment_attempt_at=timezone.now() + timedelta(seconds=delay),
        )
        logger.info(
            "deferred payment refused, rescheduled",
            extra={"order_id": str(order.id), "reason": reason, "delay_s": round(delay, 2)},
        )
        return Order.objects.get(id=order.id)
    if status == OrderStatus.PENDING_PAYMENT:
        if order.payment_attempts + 1 >= settings.ORDERS_DEFERRED_PAYMENT_MAX_ATTEMPTS:
            logger.warning("deferred payment gave up", extra={"order_id": str(order.id)})
            with transaction.atomic(using=alias):
                order = order_transition(order_id=order.id, to_status=OrderStatus.FAILED)
                _emit_order_event(order)
            return order
        logger.info(
            "deferred payment still unavailable",
            extra={"order_id": str(order.id), "reason": reason},
        )
        return Order.objects.get(id=order.id)
    with transaction.atomic(using=alias):
        order = order_transition(order_id=order.id, to_status=status, **fields)
        _emit_order_event(order)
    return order


__all__ = [
    "ORDER_PLACEMENT",
    "InvalidTransitionError",
    "OrderStatus",
    "deferred_payments_claim_due",
    "deferred_payments_release",
    "order_authorize_deferred",
    "order_create",
    "order_place",
    "order_transition",
]
