"""Webhook endpoints, the transactional outbox and its deliveries.

* :class:`Endpoint`: where a user wants events, which types, and the signing secret.
* :class:`OutboxEvent`: one event, written in the same transaction as the state change
  that caused it. Its id is the ``webhook-id`` receivers dedupe on.
* :class:`Delivery`: one event for one endpoint. Fan-out happens when the event is
  written (same transaction), so the set of receivers is the set subscribed at the
  moment of the change, and the relay only ever moves delivery rows (adr/0006).
  Its schedule lives here (``next_attempt_at``), never in broker countdowns.
* :class:`DeliveryAttempt`: one HTTP attempt, for operators and for the schedule tests.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models


class Endpoint(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    url = models.URLField(max_length=2048)
    event_types = ArrayField(models.CharField(max_length=64))
    # Standard Webhooks form: "whsec_" + base64 of 32 random bytes. Stored as is because
    # every delivery signs with it; shown to the API user once, at creation.
    secret = models.CharField(max_length=128)
    is_active = models.BooleanField(default=True)
    # Why an inactive endpoint stopped: "gone" (it answered 410) or "deleted" (by its owner).
    disabled_reason = models.CharField(max_length=32, blank=True, default="")
    disabled_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["owner", "is_active"], name="wh_endpoint_owner_active")]

    def __str__(self) -> str:
        return f"endpoint {self.url}"


class OutboxEvent(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    type = models.CharField(max_length=64)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_events"
    )
    # The whole Standard Webhooks envelope: {"type", "timestamp", "data"}.
    payload = models.JSONField()
    # One event per state change even if the code that emits it runs twice, e.g.
    # "order:<id>:order.paid" (a state machine never re-enters a status).
    dedupe_key = models.CharField(max_length=200, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.id}"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"  # waiting for next_attempt_at, or being attempted (leased)
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # not attempted further: the endpoint was disabled or deleted
    DEAD = "dead"  # dead-lettered: attempts exhausted or refused for good; replayable


class Delivery(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    event = models.ForeignKey(OutboxEvent, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="deliveries")
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # Set when the relay handed the delivery to the broker; cleared when a worker claims
    # it. A due delivery with no enqueued_at (broker was down, or its attempt failed and
    # was rescheduled) is published by the sweep.
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # The claim of the worker attempting it now; its result is recorded only under it.
    lease_id = models.UUIDField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")
    last_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    dead_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(fields=["event", "endpoint"], name="wh_delivery_once"),
            models.CheckConstraint(
                condition=models.Q(status__in=DeliveryStatus.values), name="wh_delivery_status"
            ),
        ]
        indexes = [
            # The sweep: pending deliveries by due time.
            models.Index(
                fields=["next_attempt_at"],
                name="wh_delivery_due",
                condition=models.Q(status="pending"),
            ),
            models.Index(fields=["endpoint", "-created_at"], name="wh_delivery_endpoint"),
            models.Index(
                fields=["-dead_at"], name="wh_delivery_dead", condition=models.Q(status="dead")
            ),
        ]

    def __str__(self) -> str:
        return f"delivery {self.id} ({self.status})"


class DeliveryAttempt(models.Model):
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    # When the following attempt was scheduled (None when this one was the last).
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=32)  # succeeded, retry, dead, gone, forbidden
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True, default="")
    latency_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["delivery", "number"]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}: {self.outcome}"
