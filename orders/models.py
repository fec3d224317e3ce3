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
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"


# The whole state machine: which statuses each status may move to. Terminal statuses
# (failed, cancelled, refunded) move nowhere; refunds move a paid order (orders.refunds).
ORDER_TRANSITIONS: dict[str, frozenset[str]] = {
    OrderStatus.PENDING: frozenset(
        {OrderStatus.PAID, OrderStatus.PENDING_PAYMENT, OrderStatus.FAILED, OrderStatus.CANCELLED}
    ),
    OrderStatus.PENDING_PAYMENT: frozenset(
        {OrderStatus.PAID, OrderStatus.FAILED, OrderStatus.CANCELLED}
    ),
    OrderStatus.PAID: frozenset({OrderStatus.PARTIALLY_REFUNDED, OrderStatus.REFUNDED}),
    OrderStatus.PARTIALLY_REFUNDED: frozenset(
        {OrderStatus.PARTIALLY_REFUNDED, OrderStatus.REFUNDED}
    ),
    OrderStatus.REFUNDED: frozenset(),
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
    # Refunds (orders.refunds): what the provider refunded, and what pending refunds hold.
    refunded_amount = models.BigIntegerField(default=0)
    refund_pending_amount = models.BigIntegerField(default=0)
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
            # The database itself refuses to refund more than was paid.
            models.CheckConstraint(
                condition=models.Q(refunded_amount__gte=0, refund_pending_amount__gte=0)
                & models.Q(
                    total_amount__gte=models.F("refunded_amount")
                    + models.F("refund_pending_amount")
                ),
                name="order_refunds_within_total",
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


class RefundStatus(models.TextChoices):
    PENDING = "pending"  # accepted, not yet confirmed by the provider
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # declined by the provider, or given up; its amount is released


class Refund(models.Model):
    """All or part of a paid order given back; its id is the provider's Idempotency-Key."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="refunds")
    amount = models.BigIntegerField(help_text="Minor units, in the order's currency.")
    currency = models.CharField(max_length=3)
    reason = models.CharField(max_length=500, blank=True, default="")
    status = models.CharField(
        max_length=16, choices=RefundStatus.choices, default=RefundStatus.PENDING
    )
    provider_refund_id = models.CharField(max_length=64, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["order", "-created_at"], name="refund_order_created_idx"),
            models.Index(
                fields=["next_attempt_at"],
                name="refund_pending_due_idx",
                condition=models.Q(status="pending"),
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(amount__gt=0), name="refund_amount_gt_0"),
            models.CheckConstraint(
                condition=models.Q(status__in=RefundStatus.values), name="refund_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"refund {self.id} of {self.amount} ({self.status})"
