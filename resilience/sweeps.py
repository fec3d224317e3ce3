"""Leased claims for background sweeps: the schedule in Postgres is the retry layer.

A sweep claims the rows whose next attempt is due and, in the same transaction, moves
their next attempt one lease ahead, so the next sweeps do not enqueue them again while
their task waits in the queue (at collapse load they did: thousands of copies for a few
hundred rows). If the task is lost, the row is due again when the lease runs out; if
its task could not even be published, :func:`release` makes it due at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from django.db import models, transaction
from django.utils import timezone

from resilience.db_routing import current_alias


def claim_due(
    queryset: models.QuerySet, *, due_field: str, lease_s: float, limit: int
) -> list[Any]:
    """Ids of at most ``limit`` rows of ``queryset`` due by ``due_field``, leased."""
    now = timezone.now()
    with transaction.atomic(using=current_alias()):
        due = list(
            queryset.select_for_update(skip_locked=True)
            .filter(**{f"{due_field}__lte": now})
            .order_by(due_field)
            .values_list("id", flat=True)[:limit]
        )
        queryset.model.objects.filter(id__in=due).update(
            **{due_field: now + timedelta(seconds=lease_s)}
        )
    return due


def release(queryset: models.QuerySet, ids: Iterable[Any], *, due_field: str) -> None:
    """Make claimed rows of ``queryset`` due again at once."""
    queryset.filter(id__in=list(ids)).update(**{due_field: timezone.now()})


def enqueue_claimed(ids: list[Any], task: Any, release_rest: Callable[[list[Any]], None]) -> int:
    """Publish one ``task`` per claimed id; when the broker fails, release what was not sent.

    The rest is due again for the next sweep (kombu and redis raise many types; all mean
    "not now"), and the error propagates so the sweep shows as failed.
    """
    for sent, row_id in enumerate(ids):
        try:
            task.delay(str(row_id))
        except Exception:
            release_rest(ids[sent:])
            raise
    return len(ids)
