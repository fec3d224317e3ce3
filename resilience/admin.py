"""Admin for idempotency records: read-only, with the operator's two fixes as actions.

Runbook: runbooks/IdempotencyKeyCollision.md.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from resilience import idempotency
from resilience.models import IdempotencyRecord

FINISHED = IdempotencyRecord.FINISHED


def _lock_cutoff():
    return idempotency.now() - timedelta(seconds=settings.IDEMPOTENCY_LOCK_TIMEOUT_S)


class StateFilter(admin.SimpleListFilter):
    """The four states an operator tells apart (docs/patterns/idempotency-keys.md)."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("finished", "Finished (replays)"),
            ("in_flight", "In flight (lock held)"),
            ("stale_lock", "Stale lock (holder died)"),
            ("resumable", "Failed, resumable (unlocked, unfinished)"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        cutoff = _lock_cutoff()
        unfinished = queryset.exclude(recovery_point=FINISHED)
        match self.value():
            case "finished":
                return queryset.filter(recovery_point=FINISHED)
            case "in_flight":
                return unfinished.filter(locked_at__gte=cutoff)
            case "stale_lock":
                return unfinished.filter(locked_at__lt=cutoff)
            case "resumable":
                return unfinished.filter(locked_at__isnull=True)
        return queryset


class AgeFilter(admin.SimpleListFilter):
    title = "age"
    parameter_name = "age"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("1h", "Younger than 1 hour"),
            ("24h", "Younger than 24 hours"),
            ("old", "Older than 24 hours"),
            ("expired", "Past retention (purgeable)"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        at = idempotency.now()
        match self.value():
            case "1h":
                return queryset.filter(created_at__gte=at - timedelta(hours=1))
            case "24h":
                return queryset.filter(created_at__gte=at - timedelta(hours=24))
            case "old":
                return queryset.filter(created_at__lt=at - timedelta(hours=24))
            case "expired":
                retention = timedelta(seconds=settings.IDEMPOTENCY_RETENTION_S)
                return queryset.filter(created_at__lt=at - retention)
        return queryset


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(admin.ModelAdmin):
    list_display = (
        "key",
        "principal",
        "scope",
        "endpoint",
        "response_status",
        "recovery_point",
        "created_at",
        "locked",
    )
    list_filter = (StateFilter, AgeFilter, "scope")
    # Exact key (clients quote the whole key), or part of the principal's email.
    search_fields = ("=key", "principal__email")
    list_select_related = ("principal",)
    ordering = ("-created_at",)
    show_full_result_count = False  # COUNT(*) on a large table on every page is wasteful
    actions = ("purge_expired", "release_stale_locks")
    fieldsets = (
        (None, {"fields": ("key", "principal", "scope", "endpoint", "fingerprint")}),
        (
            "Progress",
            {
                "fields": (
                    "recovery_point",
                    "resource_id",
                    "locked_at",
                    "attempts",
                    "last_run_at",
                    "created_at",
                    "finished_at",
                )
            },
        ),
        ("Stored response", {"fields": ("response_status", "stored_response")}),
    )
    readonly_fields = (
        "key",
        "principal",
        "scope",
        "endpoint",
        "fingerprint",
        "recovery_point",
        "resource_id",
        "locked_at",
        "attempts",
        "last_run_at",
        "created_at",
        "finished_at",
        "response_status",
        "stored_response",
    )

    @admin.display(description="endpoint")
    def endpoint(self, record: IdempotencyRecord) -> str:
        return f"{record.request_method} {record.request_path}"

    @admin.display(description="locked", boolean=True)
    def locked(self, record: IdempotencyRecord) -> bool:
        return record.locked_at is not None

    @admin.display(description="response")
    def stored_response(self, record: IdempotencyRecord) -> str:
        if record.response_status is None:
            return "(nothing stored yet)"
        try:
            body = json.dumps(json.loads(record.response_body), indent=2, ensure_ascii=False)
        except ValueError:
            body = record.response_body
        headers = json.dumps(record.response_headers, indent=2, ensure_ascii=False)
        return format_html(
            "<pre>HTTP {}\n{}</pre><pre>{}</pre>", record.response_status, headers, body
        )

    # Read-only detail; changelist actions stay available (they ask with obj=None).
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request)

    @admin.action(description="Purge the selected records past retention", permissions=["change"])
    def purge_expired(self, request: HttpRequest, queryset: QuerySet) -> None:
        deleted = idempotency.idempotency_records_purge_expired(queryset=queryset)
        self.message_user(
            request,
            f"Purged {deleted} record(s) older than the retention period; younger ones kept.",
            messages.SUCCESS,
        )

    @admin.action(description="Release stale locks of the selected records", permissions=["change"])
    def release_stale_locks(self, request: HttpRequest, queryset: QuerySet) -> None:
        released = idempotency.idempotency_locks_release_stale(queryset=queryset)
        self.message_user(
            request,
            f"Released {released} stale lock(s); locks younger than the lock timeout kept.",
            messages.SUCCESS,
        )
