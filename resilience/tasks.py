"""Periodic idempotency-key maintenance, run by worker-default on the ``background`` alias.

Both tasks are safe to run twice at once: every write is a conditional UPDATE or a delete
by id, and each run is bounded (batch sizes in settings).
"""

from __future__ import annotations

import logging

from celery import shared_task

from resilience.db_routing import current_alias
from resilience.idempotency import (
    idempotency_records_complete_stale,
    idempotency_records_purge_expired,
)

logger = logging.getLogger(__name__)


@shared_task(name="resilience.tasks.complete_stale_idempotency_records")
def complete_stale_idempotency_records() -> dict[str, int]:
    """Re-drive records stuck mid-way through their phases (brandur's completer)."""
    counts = idempotency_records_complete_stale()
    logger.info("idempotency completer run", extra={**counts, "db_alias": current_alias()})
    return counts


@shared_task(name="resilience.tasks.purge_expired_idempotency_records")
def purge_expired_idempotency_records() -> int:
    """Delete records past ``IDEMPOTENCY_RETENTION_S`` in bounded batches."""
    return idempotency_records_purge_expired()
