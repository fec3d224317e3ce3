"""Maintenance: completers for records left mid-way, the purge, stale lock release.

Run by worker-default on the ``background`` alias (resilience/tasks.py) and by the
admin's actions.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import F, Q, Subquery
from prometheus_client import Counter

from resilience.db_routing import current_alias
from resilience.idempotency.errors import IdempotencyLockLostError
from resilience.idempotency.store import (
    FINISHED,
    IdempotencyContext,
    StoredResponse,
    lock_timeout,
    log,
    now,
)
from resilience.models import IdempotencyRecord

logger = logging.getLogger("resilience.idempotency")

COMPLETER_RUNS = Counter(
    "resilience_idempotency_completer_runs_total",
    "Stale records the completer re-drove, by result.",
    ["scope", "result"],
)
PURGED = Counter(
    "resilience_idempotency_purged_records_total",
    "Idempotency records deleted after the retention period.",
)

Completer = Callable[[IdempotencyContext], StoredResponse | None]
_COMPLETERS: dict[str, Completer] = {}


def register_completer(scope: str, func: Completer | None = None) -> Any:
    """Register ``func`` to re-drive stale records of ``scope``; usable as a decorator.

    ``func(ctx)`` runs in a worker with the record's lock held. It continues from
    ``ctx.recovery_point`` exactly as a resumed request would (a declared operation's
    ``run(recovery=ctx, ...)``, or ``ctx.advance()`` in each phase's transaction) and
    returns the final :class:`StoredResponse` to store (or stores it itself with
    ``ctx.finish()`` in its last phase), or None to leave the record for a later run, the
    client's retry or the purge.
    """

    def register(completer: Completer) -> Completer:
        _COMPLETERS[scope] = completer
        return completer

    return register(func) if func is not None else register


def unregister_completer(scope: str) -> None:
    _COMPLETERS.pop(scope, None)


def _eligible_for_completion(at: datetime) -> Q:
    return (
        Q(scope__in=list(_COMPLETERS))
        & ~Q(recovery_point=FINISHED)
        & Q(last_run_at__lt=at - timedelta(seconds=settings.IDEMPOTENCY_COMPLETER_AFTER_S))
        & (Q(locked_at__isnull=True) | Q(locked_at__lt=at - lock_timeout()))
    )


def idempotency_records_complete_stale(*, batch_size: int | None = None) -> dict[str, int]:
    """Re-drive up to ``batch_size`` records stuck mid-way (brandur's completer).

    A record qualifies when unfinished, not run for ``IDEMPOTENCY_COMPLETER_AFTER_S`` and
    not locked (or its lock expired), and a completer is registered for its scope. Each is
    locked with a conditional UPDATE first, so a client's retry and the completer never
    run the same record at once. Returns counts by result.
    """
    batch_size = batch_size or settings.IDEMPOTENCY_COMPLETER_BATCH_SIZE
    counts = {"completed": 0, "deferred": 0, "failed": 0, "lock_lost": 0, "skipped": 0}
    if not _COMPLETERS:
        return counts
    alias = current_alias()
    records = IdempotencyRecord.objects.using(alias)
    candidates = list(
        records.filter(_eligible_for_completion(now()))
        .order_by("last_run_at")
        .values_list("pk", flat=True)[:batch_size]
    )
    for pk in candidates:
        at, token = now(), uuid.uuid4()
        locked = records.filter(_eligible_for_completion(at), pk=pk).update(
            locked_at=at, lock_token=token, last_run_at=at, attempts=F("attempts") + 1
        )
        if not locked:
            counts["skipped"] += 1  # a client's retry got there first
            continue
        record = records.get(pk=pk)
        ctx = IdempotencyContext(record, lock_token=token, outcome="completer")
        result = _complete_one(ctx, _COMPLETERS[record.scope])
        counts[result] += 1
        COMPLETER_RUNS.labels(scope=record.scope, result=result).inc()
        log("idempotency completer", ctx, result=result)
    return counts


def _complete_one(ctx: IdempotencyContext, completer: Completer) -> str:
    try:
        response = completer(ctx)
    except IdempotencyLockLostError:
        return "lock_lost"
    except Exception:
        logger.exception(
            "idempotency completer failed", extra={"idempotency_record": ctx.record_id}
        )
        ctx._release()
        return "failed"
    if ctx.finished:
        return "completed"  # stored by its last phase (IdempotencyContext.finish)
    if response is None:
        ctx._release()
        return "deferred"
    return "completed" if ctx._store(response) else "lock_lost"


def idempotency_records_purge_expired(
    *, batch_size: int | None = None, max_batches: int | None = None, queryset: Any = None
) -> int:
    """Delete records older than ``IDEMPOTENCY_RETENTION_S`` in bounded batches.

    Each batch is one short ``DELETE ... WHERE id IN (SELECT id ... LIMIT n)``, so the purge
    never holds many row locks or one long transaction. Returns how many were deleted.
    """
    batch_size = batch_size or settings.IDEMPOTENCY_PURGE_BATCH_SIZE
    max_batches = max_batches or settings.IDEMPOTENCY_PURGE_MAX_BATCHES
    cutoff = now() - timedelta(seconds=settings.IDEMPOTENCY_RETENTION_S)
    alias = current_alias()
    base = queryset if queryset is not None else IdempotencyRecord.objects.all()
    expired = base.using(alias).filter(created_at__lt=cutoff)
    total = 0
    for _ in range(max_batches):
        batch = expired.order_by("pk").values("pk")[:batch_size]
        deleted, _ = IdempotencyRecord.objects.using(alias).filter(pk__in=Subquery(batch)).delete()
        total += deleted
        if deleted < batch_size:
            break
    PURGED.inc(total)
    logger.info("idempotency records purged", extra={"deleted": total, "db_alias": alias})
    return total


def idempotency_locks_release_stale(*, queryset: Any = None) -> int:
    """Unlock unfinished records whose lock is older than the lock timeout.

    Such a lock belongs to a process that died; releasing it lets the client's retry
    resume at once instead of after the timeout. Live locks are left alone.
    """
    base = queryset if queryset is not None else IdempotencyRecord.objects.all()
    released = (
        base.using(current_alias())
        .exclude(recovery_point=FINISHED)
        .filter(locked_at__lt=now() - lock_timeout())
        .update(locked_at=None, lock_token=None)
    )
    logger.info("idempotency stale locks released", extra={"released": released})
    return released
