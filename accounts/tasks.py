"""Periodic account maintenance, run by worker-default."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import connections

from accounts.services import tokens_purge_expired
from resilience.db_routing import current_alias

logger = logging.getLogger(__name__)


@shared_task(name="accounts.tasks.purge_expired_tokens")
def purge_expired_tokens() -> int:
    """Delete expired API tokens, on the ``background`` alias like every task."""
    deleted = tokens_purge_expired()
    alias = current_alias()
    # Say which pool served the work, so an operator can tell from the log line alone.
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT current_setting('application_name')")
        (application_name,) = cursor.fetchone()
    logger.info(
        "expired tokens purged",
        extra={"deleted": deleted, "db_alias": alias, "application_name": application_name},
    )
    return deleted
