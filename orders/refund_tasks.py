"""Pending refunds, completed by worker-default on the ``background`` alias."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from orders.refunds import refund_complete_pending, refunds_claim_due, refunds_release
from resilience import sweeps


@shared_task(name="orders.refund_tasks.complete_pending_refund")
def complete_pending_refund(refund_id: str) -> str:
    """One attempt for a pending refund; returns its status."""
    return refund_complete_pending(refund_id=refund_id).status


@shared_task(name="orders.refund_tasks.sweep_pending_refunds")
def sweep_pending_refunds() -> int:
    """Enqueue one attempt for every pending refund that is due (bounded batch, claimed)."""
    due = refunds_claim_due(limit=settings.ORDERS_DEFERRED_PAYMENT_BATCH)
    return sweeps.enqueue_claimed(
        due, complete_pending_refund, lambda rest: refunds_release(refund_ids=rest)
    )
