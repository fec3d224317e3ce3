"""Orders and their line items; the total is always computed by the server."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class OrderStatus(models.TextChoices):
    PENDING = "pending"
    PAID = "paid"
    PENDING_PAYMENT = "pending_payment"
    FAILED = "failed"
    CANCELLED = "cancelled"


# The whole state machine: which statuses each status may move to. Terminal statuses
# (paid, failed, cancelled) move nowhere.
ORDER_TRANSITIONS: dict[str, frozenset[str]] = {
    OrderStatus.PENDING: frozenset(
        {OrderStatus.PAID, OrderStatus.PENDING_PAYMENT, OrderStatus.FAILED, OrderStatus.CANCELLED}
    ),
    OrderStatus.PENDING_PAYMENT: frozenset(
        {OrderStatus.PAID, OrderStatus.FAILED, OrderStatus.CANCELLED}
    ),
    OrderStatus.PAID: frozenset(),
    OrderStatus.FAILED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
}


class Order(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="orders"
    )
    currency = models.CharField(max_length=3)
    total_amount = models.BigIntegerField(help_text="Sum of line totals, in minor units.")
    status = models.CharField(
        max_length=20, choices=OrderStatus.choices, default=OrderStatus.PENDING
    )
    payment_authorization_id = models.CharField(max_length=64, blank=True, default="")
    # Deferred authorisation is scheduled here, not in broker countdowns (adr/0003).
    payment_attempts = models.PositiveIntegerField(default=0)
    next_payment_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The list and the report both scan one owner's orders by time.
            models.Index(fields=["owner", "-created_at"], name="order_owner_created_idx"),
            models.Index(
                fields=["next_payment_attempt_at"],
                name="order_deferred_payment_idx",
                condition=models.Q(status="pending_payment"),
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(total_amount__gte=0), name="order_total_gte_0"
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=OrderStatus.values), name="order_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"order {self.id} ({self.status})"


class OrderItem(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="items")
    sku = models.CharField(max_length=64)
    quantity = models.PositiveIntegerField()
    unit_price = models.BigIntegerField(help_text="Minor units.")

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(quantity__gte=1), name="item_quantity_gte_1"),
            models.CheckConstraint(condition=models.Q(unit_price__gte=0), name="item_price_gte_0"),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.sku}"

    @property
    def line_total(self) -> int:
        return self.quantity * self.unit_price
