"""Webhook tasks: delivery on queue ``webhooks`` (worker-webhooks), the sweep on ``default``.

Both run on the ``background`` database alias (config/celery.py). Routes live in
settings (``CELERY_TASK_ROUTES``): ``webhooks.tasks.sweep_outbox`` -> default, the rest ->
``WEBHOOKS_QUEUE``.
"""

from __future__ import annotations

from celery import shared_task

from webhooks import services


@shared_task(name="webhooks.tasks.deliver")
def deliver(delivery_id: str) -> str:
    """One attempt at one delivery. Safe to run twice: the claim in the row decides."""
    return services.delivery_attempt(delivery_id=delivery_id)


@shared_task(name="webhooks.tasks.sweep_outbox")
def sweep_outbox() -> int:
    """Publish due deliveries left behind or rescheduled (beat, every few seconds)."""
    return services.outbox_sweep()
