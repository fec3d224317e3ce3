"""Reads for orders, always scoped to the owner."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Count, Min, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from orders.models import Order, OrderStatus
from resilience.problems import NotFoundError


def order_list(*, owner: Any) -> QuerySet[Order]:
    return Order.objects.filter(owner=owner).prefetch_related("items")


def order_get(*, owner: Any, order_id: Any) -> Order:
    """One of the owner's orders; another user's order is indistinguishable from none."""
    try:
        return Order.objects.prefetch_related("items").get(owner=owner, id=order_id)
    except Order.DoesNotExist as exc:
        raise NotFoundError("No such order.") from exc


def order_report(*, owner: Any, days: int) -> list[dict[str, Any]]:
    """The deliberately expensive query: the owner's orders by day, status and currency."""
    since = timezone.now() - timedelta(days=days)
    rows = (
        Order.objects.filter(owner=owner, created_at__gte=since)
        .annotate(day=TruncDate("created_at"))
        .values("day", "status", "currency")
        .annotate(orders=Count("id"), total_amount=Sum("total_amount"))
        .order_by("day", "status", "currency")
    )
    return list(rows)


def pending_payment_oldest_age_s() -> float:
    """Seconds since the oldest ``pending_payment`` order was created (0 when none)."""
    oldest = Order.objects.filter(status=OrderStatus.PENDING_PAYMENT).aggregate(
        oldest=Min("created_at")
    )["oldest"]
    return max(0.0, (timezone.now() - oldest).total_seconds()) if oldest else 0.0
