"""Refunds of paid orders, all or part of the amount, through the payment provider.

Refunding is a declared operation (``REFUND``, resilience.phases; the walk in
docs/adding-a-resilient-endpoint.md):

1. ``refund_created``, one transaction: reserve the amount on the order and create the
   refund ``pending``. The reservation is one conditional UPDATE: the order is paid (or
   partly refunded), and what is refunded or pending plus this amount stays within its
   total. It is the check and the write in one statement, so concurrent refunds can
   never reserve more than was paid (and a CHECK constraint says so too);
2. ``refund``, no transaction open: ``POST /refunds`` through the resilient client, with
   the operation's downstream key (``refund-<id>``: a repeated call is the same refund);
3. ``refund_settled``, one transaction: ``succeeded`` (the order's refunded amount and
   status move, and ``order.refunded`` is staged in the webhook outbox), or ``failed``
   when the provider declines (the reservation is released). When payments is
   unavailable the refund stays ``pending`` and the sweep (:func:`refunds_claim_due`,
   beat) completes it later.

Only the attempt that moves a refund out of ``pending`` writes its outcome (a
conditional UPDATE on the refund's status), so a client's retry and the sweep racing on
one refund apply it once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, QuerySet, Value, When
from django.utils import timezone

from common.errors import ErrorCode
from orders.models import ORDER_TRANSITIONS, Order, OrderStatus, Refund, RefundStatus
from orders.payments import PAYMENTS
from orders.selectors import order_get
from resilience import degrade, metrics, sweeps
from resilience.db_routing import current_alias
from resilience.errors import PolicyRefusal, Refusal
from resilience.http import client
from resilience.idempotency import IdempotencyContext
from resilience.phases import Operation, Progress, atomic, call
from resilience.problems import ConflictError, UnprocessableError
from webhooks.services import outbox_emit

logger = logging.getLogger(__name__)

# The statuses a refund may start from: those the state machine lets become `refunded`.
REFUNDABLE = frozenset(
    s for s, targets in ORDER_TRANSITIONS.items() if OrderStatus.REFUNDED in targets
)
REFUND_EVENT = "order.refunded"


class OrderNotRefundableError(ConflictError):
    code = ErrorCode.ORDER_NOT_REFUNDABLE
    title = "Order cannot be refunded"


class RefundExceedsRemainingError(UnprocessableError):
    code = ErrorCode.REFUND_EXCEEDS_REMAINING
    title = "Refund exceeds what is left to refund"


class RefundCurrencyMismatchError(UnprocessableError):
    code = ErrorCode.REFUND_CURRENCY_MISMATCH
    title = "Refund currency differs from the order's"


class RefundDeclinedError(Exception):
    """The provider answered and refused the refund (a 4xx other than 429)."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        super().__init__(f"refund declined ({status}): {detail}")


def payments_refund(refund: Refund, *, authorization_id: str, retry: bool = True) -> str:
    """Refund at the provider; return its refund id. Raises :class:`RefundDeclinedError`,
    or a :class:`resilience.errors.Refusal` when the provider cannot be asked now."""
    response = client(PAYMENTS).request(
        "POST",
        "/refunds",
        json={
            "authorization_id": authorization_id,
            "order_id": str(refund.order_id),
            "amount": refund.amount,
            "currency": refund.currency,
        },
        idempotency_key=REFUND.downstream_key(refund.id),
        retry=retry,
    )
    if response.status_code in (200, 201):
        return response.json()["id"]
    raise RefundDeclinedError(response.status_code, response.text[:200])


# --- Phase 1: reserve -----------------------------------------------------------------------
def _refusal(order: Order, amount: int) -> Exception:
    """Why a reservation found nothing to update, read after the fact."""
    order.refresh_from_db()
    if order.status not in REFUNDABLE:
        return OrderNotRefundableError(
            f"An order in status {order.status!r} cannot be refunded; only a paid one can.",
            extra={"order_status": order.status},
        )
    left = order.total_amount - order.refunded_amount - order.refund_pending_amount
    return RefundExceedsRemainingError(
        f"{amount} is more than the {left} {order.currency} left to refund on this order.",
        extra={"refundable_amount": left},
    )


def refund_reserve(
    *, owner: Any, order_id: Any, amount: int, currency: str | None = None, reason: str = ""
) -> Refund:
    """Reserve ``amount`` and create the refund, in the caller's transaction (phase 1)."""
    order = order_get(owner=owner, order_id=order_id)  # 404 for another user's order
    if currency is not None and currency != order.currency:
        raise RefundCurrencyMismatchError(
            f"This order is in {order.currency}; a refund of it is too, not {currency}.",
            extra={"order_currency": order.currency},
        )
    now = timezone.now()
    reserved = Order.objects.filter(
        id=order.id,
        status__in=REFUNDABLE,
        total_amount__gte=F("refunded_amount") + F("refund_pending_amount") + amount,
    ).update(refund_pending_amount=F("refund_pending_amount") + amount, updated_at=now)
    if not reserved:
        raise _refusal(order, amount)
    # Not due for the sweep while this request calls payments; due if the request dies.
    lease = timedelta(seconds=settings.ORDERS_DEFERRED_PAYMENT_LEASE_S)
    return Refund.objects.create(
        order=order,
        amount=amount,
        currency=order.currency,
        reason=reason,
        next_attempt_at=now + lease,
    )


# --- Phase 2: ask the provider ------------------------------------------------------------
def _ask(refund: Refund, *, retry: bool) -> tuple[str, dict[str, Any]]:
    """Ask the provider: the status to settle in and the fields to write
    (``refused_for_s``: our own refusal, the provider was not asked)."""
    order = Order.objects.only("payment_authorization_id").get(id=refund.order_id)
    try:
        provider_id = payments_refund(
            refund, authorization_id=order.payment_authorization_id, retry=retry
        )
    except RefundDeclinedError as exc:
        logger.warning("refund declined", extra={"refund_id": str(refund.id), "status": exc.status})
        return RefundStatus.FAILED, {}
    except Refusal as exc:  # payments cannot be asked now: the refund stays pending
        degrade.or_raise(exc)
        fields: dict[str, Any] = {"reason": type(exc).__name__}
        if isinstance(exc, PolicyRefusal):  # our own "not now": payments was not even called
            fields["refused_for_s"] = exc.retry_after_s or 0.0
        return RefundStatus.PENDING, fields
    return RefundStatus.SUCCEEDED, {"provider_refund_id": provider_id}


# --- Phase 3: settle -------------------------------------------------------------------------
def _emit_refunded(order: Order, refund: Refund) -> None:
    outbox_emit(
        event_type=REFUND_EVENT,
        owner=order.owner_id,
        dedupe_key=f"refund:{refund.id}:{REFUND_EVENT}",
        payload={
            "order": {
                "id": str(order.id),
                "status": order.status,
                "currency": order.currency,
                "total_amount": order.total_amount,
                "refunded_amount": order.refunded_amount,
            },
            "refund": {"id": str(refund.id), "amount": refund.amount, "reason": refund.reason},
        },
    )


def _apply(refund: Refund, status: str, provider_refund_id: str = "") -> bool:
    """Write the outcome of a pending refund, in the caller's transaction; False if not pending.

    The refund's conditional UPDATE is taken first: of two attempts settling one refund,
    the second waits for the first and then finds it no longer pending.
    """
    now = timezone.now()
    settled = Refund.objects.filter(id=refund.id, status=RefundStatus.PENDING).update(
        status=status, provider_refund_id=provider_refund_id, next_attempt_at=None, updated_at=now
    )
    if not settled:
        return False
    changes: dict[str, Any] = {"refund_pending_amount": F("refund_pending_amount") - refund.amount}
    if status == RefundStatus.SUCCEEDED:
        refunded = F("refunded_amount") + refund.amount
        changes["refunded_amount"] = refunded
        changes["status"] = Case(
            When(total_amount=refunded, then=Value(OrderStatus.REFUNDED)),
            default=Value(OrderStatus.PARTIALLY_REFUNDED),
        )
    moved = Order.objects.filter(id=refund.order_id, status__in=REFUNDABLE).update(
        updated_at=now, **changes
    )
    if not moved:  # a pending refund holds its order refundable: never expected
        raise RuntimeError(f"the order of pending refund {refund.id} is no longer refundable")
    if status == RefundStatus.SUCCEEDED:
        refund.refresh_from_db()
        _emit_refunded(Order.objects.get(id=refund.order_id), refund)
    return True


def _next_attempt_at(attempt: int) -> Any:
    """Full jitter over the deferred-payment schedule (capped exponential)."""
    base = settings.ORDERS_DEFERRED_PAYMENT_BASE_S
    cap = settings.ORDERS_DEFERRED_PAYMENT_CAP_S
    delay = random.uniform(0, min(cap, base * 2**attempt))  # noqa: S311 - jitter, not crypto
    return timezone.now() + timedelta(seconds=delay)


# --- The operation: what each phase does; resilience.phases runs and records them ---------
def _reserve(progress: Progress) -> Refund:
    """Phase 1 (its transaction): the reservation and the ``pending`` refund."""
    return refund_reserve(**progress.inputs)


def _ask_provider(progress: Progress) -> tuple[str, dict[str, Any]] | None:
    """Phase 2, no transaction open: the request path's call, with retries (None: the
    refund was settled meanwhile, by the sweep, before this resumed request)."""
    refund = progress.resource
    if refund.status != RefundStatus.PENDING:
        return None
    return _ask(refund, retry=True)


def _settle(progress: Progress) -> Refund:
    """Phase 3 (its transaction): the outcome, or the deferral of a pending refund."""
    refund = progress.resource
    if progress.result is not None:
        status, fields = progress.result
        if status == RefundStatus.PENDING:
            metrics.DEGRADED_RESPONSES.labels("payments", "refund_pending").inc()
            logger.warning(
                "refund deferred", extra={"refund_id": str(refund.id), "reason": fields["reason"]}
            )
            Refund.objects.filter(id=refund.id, status=RefundStatus.PENDING).update(
                next_attempt_at=_next_attempt_at(0), updated_at=timezone.now()
            )
        else:
            _apply(refund, status, fields.get("provider_refund_id", ""))
    return Refund.objects.get(id=refund.id)


REFUND = Operation(
    "refund",  # the provider's key is "refund-<id>", from every path (adr/0014)
    load=lambda refund_id: Refund.objects.get(id=refund_id),
    phases=[
        atomic("refund_created", _reserve),
        call("refund", _ask_provider),
        atomic("refund_settled", _settle),
    ],
)


def refund_create(
    *,
    owner: Any,
    order_id: Any,
    amount: int,
    currency: str | None = None,
    reason: str = "",
    recovery: IdempotencyContext | None = None,
    respond: Callable[[Refund], Any] | None = None,
) -> Any:
    """Refund ``amount`` of the owner's order, resuming from ``recovery`` if given.

    Returns ``respond(refund)`` (stored as the idempotent answer with the last phase), or
    the refund: ``succeeded``, ``failed`` (declined) or ``pending`` (payments is
    unavailable: the sweep completes it). Raises the 404, 409 and 422 refusals.
    """
    return REFUND.run(
        recovery=recovery,
        respond=respond,
        owner=owner,
        order_id=order_id,
        amount=amount,
        currency=currency,
        reason=reason,
    )


# --- The background: pending refunds ---------------------------------------------------------
def refunds_claim_due(*, limit: int) -> list[Any]:
    """Claim the pending refunds whose next attempt is due, for one sweep (leased)."""
    return sweeps.claim_due(
        Refund.objects.filter(status=RefundStatus.PENDING),
        due_field="next_attempt_at",
        lease_s=settings.ORDERS_DEFERRED_PAYMENT_LEASE_S,
        limit=limit,
    )


def refunds_release(*, refund_ids: Iterable[Any]) -> None:
    """Make claimed refunds due again at once (their task could not be published)."""
    sweeps.release(
        Refund.objects.filter(status=RefundStatus.PENDING), refund_ids, due_field="next_attempt_at"
    )


def refund_complete_pending(*, refund_id: Any) -> Refund:
    """One background attempt for a pending refund (single attempt: the schedule retries).

    A pending refund is never given up: the money is owed. Attempts refused by our own
    breaker or bulkhead spend none of the schedule, so the first attempt after an outage
    comes soon after the breaker lets calls through.
    """
    alias = current_alias()
    with transaction.atomic(using=alias):
        refund = Refund.objects.select_for_update(skip_locked=True).filter(id=refund_id).first()
        if refund is None or refund.status != RefundStatus.PENDING:
            return refund or Refund.objects.get(id=refund_id)
        Refund.objects.filter(id=refund.id).update(
            attempts=refund.attempts + 1, next_attempt_at=_next_attempt_at(refund.attempts + 1)
        )
    status, fields = _ask(refund, retry=False)
    if status == RefundStatus.PENDING:
        refused_for_s = fields.get("refused_for_s")
        if refused_for_s is not None:
            delay = refused_for_s + random.uniform(0, settings.ORDERS_DEFERRED_PAYMENT_BASE_S)  # noqa: S311
            Refund.objects.filter(id=refund.id, status=RefundStatus.PENDING).update(
                attempts=refund.attempts, next_attempt_at=timezone.now() + timedelta(seconds=delay)
            )
        logger.info(
            "pending refund still unavailable",
            extra={"refund_id": str(refund.id), "reason": fields["reason"]},
        )
    else:
        with transaction.atomic(using=alias):
            _apply(refund, status, fields.get("provider_refund_id", ""))
    return Refund.objects.get(id=refund.id)


# --- Reads -----------------------------------------------------------------------------------
def refund_list(*, owner: Any, order_id: Any) -> QuerySet[Refund]:
    """The refunds of one of the owner's orders, newest first (404 for another's order)."""
    order = order_get(owner=owner, order_id=order_id)
    return Refund.objects.filter(order=order)


__all__ = [
    "OrderNotRefundableError",
    "RefundCurrencyMismatchError",
    "RefundExceedsRemainingError",
    "refund_complete_pending",
    "refund_create",
    "refund_list",
    "refund_reserve",
    "refunds_claim_due",
    "refunds_release",
]
