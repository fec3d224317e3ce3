"""Reads for webhooks: endpoints and deliveries of one owner, and the backlog."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Min, Q, QuerySet
from django.utils import timezone

from resilience.problems import NotFoundError
from webhooks.models import Delivery, DeliveryStatus, Endpoint


def endpoint_list(*, owner: Any) -> QuerySet[Endpoint]:
    """The owner's endpoints, deleted ones excluded (disabled by 410 ones included)."""
    return Endpoint.objects.filter(owner=owner).exclude(disabled_reason="deleted")


def endpoint_get(*, owner: Any, endpoint_id: Any) -> Endpoint:
    """One of the owner's endpoints, or 404 (also for another owner's: no enumeration)."""
    endpoint = endpoint_list(owner=owner).filter(id=endpoint_id).first()
    if endpoint is None:
        raise NotFoundError("No such webhook endpoint.")
    return endpoint


def delivery_list(
    *, owner: Any, status: str | None = None, endpoint_id: Any = None
) -> QuerySet[Delivery]:
    """The owner's deliveries, newest first, optionally by status and endpoint."""
    deliveries = Delivery.objects.filter(endpoint__owner=owner).select_related("event")
    if status:
        deliveries = deliveries.filter(status=status)
    if endpoint_id:
        deliveries = deliveries.filter(endpoint_id=endpoint_id)
    return deliveries


@dataclass(frozen=True)
class Backlog:
    pending: int
    dead: int
    lag_s: float


def delivery_backlog() -> Backlog:
    """Pending and dead counts, and how late the most overdue pending delivery is."""
    now = timezone.now()
    counts = Delivery.objects.filter(
        status__in=[DeliveryStatus.PENDING, DeliveryStatus.DEAD]
    ).aggregate(
        pending=Count("id", filter=Q(status=DeliveryStatus.PENDING)),
        dead=Count("id", filter=Q(status=DeliveryStatus.DEAD)),
    )
    oldest_due = Delivery.objects.filter(
        status=DeliveryStatus.PENDING, next_attempt_at__lte=now
    ).aggregate(oldest=Min("next_attempt_at"))["oldest"]
    lag = (now - oldest_due).total_seconds() if oldest_due else 0.0
    return Backlog(pending=counts["pending"], dead=counts["dead"], lag_s=max(0.0, lag))
