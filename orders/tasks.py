"""Deferred payment authorisation, run by worker-default on the ``background`` alias."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from orders.services import deferred_payments_due, order_authorize_deferred


@shared_task(name="orders.tasks.authorize_deferred_payment")
def authorize_deferred_payment(order_id: str) -> str:
    """One authorisation attempt for a ``pending_payment`` order; returns its status."""
    return order_authorize_deferred(order_id=order_id).status


@shared_task(name="orders.tasks.sweep_deferred_payments")
def sweep_deferred_payments() -> int:
    """Enqueue an attempt for every deferred order that is due (bounded batch)."""
    due = deferred_payments_due(limit=settings.ORDERS_DEFERRED_PAYMENT_BATCH)
    for order_id in due:
        authorize_deferred_payment.delay(str(order_id))
    return len(due)
