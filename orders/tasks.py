"""Deferred payment authorisation, run by worker-default on the ``background`` alias."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from orders.refund_tasks import complete_pending_refund, sweep_pending_refunds  # noqa: F401
from orders.services import (
    deferred_payments_claim_due,
    deferred_payments_release,
    order_authorize_deferred,
)
from resilience import sweeps


@shared_task(name="orders.tasks.authorize_deferred_payment")
def authorize_deferred_payment(order_id: str) -> str:
    """One authorisation attempt for a ``pending_payment`` order; returns its status."""
    return order_authorize_deferred(order_id=order_id).status


@shared_task(name="orders.tasks.sweep_deferred_payments")
def sweep_deferred_payments() -> int:
    """Enqueue one attempt for every deferred order that is due (bounded batch, claimed)."""
    due = deferred_payments_claim_due(limit=settings.ORDERS_DEFERRED_PAYMENT_BATCH)
    return sweeps.enqueue_claimed(
        due, authorize_deferred_payment, lambda rest: deferred_payments_release(order_ids=rest)
    )
