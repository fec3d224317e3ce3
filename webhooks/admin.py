"""Admin for webhooks: endpoints, events and deliveries, with replay of dead letters.

Runbook: runbooks/WebhookTargetDownAndDeadLetters.md.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from resilience.problems import ProblemError
from webhooks import services
from webhooks.models import Delivery, DeliveryAttempt, Endpoint, OutboxEvent


@admin.register(Endpoint)
class EndpointAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "url", "is_active", "disabled_reason", "created_at")
    list_filter = ("is_active", "disabled_reason")
    search_fields = ("id", "url", "owner__email")
    # The signing secret is never shown, not even to staff.
    exclude = ("secret",)
    readonly_fields = ("id", "owner", "url", "created_at", "disabled_at")


@admin.register(OutboxEvent)
class OutboxEventAdmin(admin.ModelAdmin):
    list_display = ("id", "type", "owner", "created_at")
    list_filter = ("type",)
    search_fields = ("id", "dedupe_key", "owner__email")
    readonly_fields = ("id", "type", "owner", "payload", "dedupe_key", "created_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    extra = 0
    can_delete = False
    readonly_fields = (
        "number",
        "started_at",
        "outcome",
        "status_code",
        "latency_ms",
        "error",
        "next_attempt_at",
    )

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "event_type",
        "endpoint",
        "status",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "dead_at",
    )
    list_filter = ("status", "event__type")
    search_fields = ("id", "event__id", "endpoint__url", "endpoint__owner__email")
    readonly_fields = [f.name for f in Delivery._meta.fields]
    list_select_related = ("event", "endpoint")
    inlines = [DeliveryAttemptInline]
    actions = ["replay"]

    @admin.display(description="event type")
    def event_type(self, delivery: Delivery) -> str:
        return delivery.event.type

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Replay selected dead-lettered or failed deliveries")
    def replay(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        replayed, refused = 0, []
        for delivery_id in queryset.values_list("id", flat=True):
            try:
                services.delivery_replay(delivery_id=delivery_id)
                replayed += 1
            except ProblemError as exc:
                refused.append(f"{delivery_id}: {exc.detail}")
        if replayed:
            self.message_user(request, f"{replayed} deliveries replayed.", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not replayed: " + "; ".join(refused[:10]), messages.WARNING)
