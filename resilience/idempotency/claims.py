"""Claims: the one statement that decides which request owns a key.

A first request costs one ``INSERT ... ON CONFLICT DO NOTHING RETURNING id`` and nothing
else: the record is built from the values it inserted rather than read back. Any other
request reads the record and gets a replay, a 422, a 409, or takes an abandoned lock over
with one conditional UPDATE.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connections
from django.db.models import F, Q

from resilience.db_routing import current_alias
from resilience.idempotency.errors import (
    IdempotencyKeyMismatchError,
    IdempotencyRequestInFlightError,
)
from resilience.idempotency.store import FINISHED, STARTED, decision, lock_timeout, now
from resilience.models import IdempotencyRecord

# Claim attempts when the record vanishes or changes between our statements.
_ACQUIRE_ATTEMPTS = 3


@dataclass(frozen=True)
class Claim:
    """What a request claims: its principal's key, and what makes it the same request."""

    principal_id: Any
    key: str
    scope: str
    method: str
    path: str
    fingerprint: str

    def matches(self, record: IdempotencyRecord) -> str | None:
        """Why ``record`` belongs to another request, or None if it is this one."""
        if record.scope != self.scope or record.request_path != self.path:
            return "endpoint"
        if record.request_method != self.method or record.fingerprint != self.fingerprint:
            return "payload"
        return None

    def columns(self, *, at: datetime, token: uuid.UUID) -> dict[str, Any]:
        """The columns of the record a first request inserts."""
        return {
            "principal": self.principal_id,
            "key": self.key,
            "scope": self.scope,
            "request_method": self.method,
            "request_path": self.path,
            "fingerprint": self.fingerprint,
            "recovery_point": STARTED,
            "resource_id": "",
            "response_body": "",
            "locked_at": at,
            "lock_token": token,
            "last_run_at": at,
            "attempts": 1,
            "created_at": at,
        }


def _insert_if_absent(claim: Claim, *, at: datetime, token: uuid.UUID, alias: str) -> int | None:
    """INSERT the record unless (principal, key) exists; return its id if we inserted it.

    One statement decides the race: the unique constraint, not a prior read, picks the one
    winner among concurrent first requests.
    """
    meta = IdempotencyRecord._meta
    columns = claim.columns(at=at, token=token)
    connection = connections[alias]
    quote = connection.ops.quote_name
    names = ", ".join(quote(meta.get_field(name).column) for name in columns)
    placeholders = ", ".join(["%s"] * len(columns))
    conflict = ", ".join(quote(meta.get_field(name).column) for name in ("principal", "key"))
    headers_column = quote(meta.get_field("response_headers").column)
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({names}, {headers_column}) "  # noqa: S608 - identifiers come from model metadata, values are parameters
        f"VALUES ({placeholders}, '{{}}'::jsonb) "
        f"ON CONFLICT ({conflict}) DO NOTHING RETURNING {quote(meta.pk.column)}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, list(columns.values()))
        row = cursor.fetchone()
    return row[0] if row else None


def _retry_after(record: IdempotencyRecord, at: datetime) -> int:
    """Seconds a client should wait before retrying an in-flight key.

    A small hint (``IDEMPOTENCY_CONFLICT_RETRY_AFTER_S``), never past the lock's expiry:
    most first requests finish well within a second.
    """
    remaining = (record.locked_at + lock_timeout() - at).total_seconds()
    return max(1, min(settings.IDEMPOTENCY_CONFLICT_RETRY_AFTER_S, math.ceil(remaining)))


def claim_record(claim: Claim) -> tuple[str, IdempotencyRecord, uuid.UUID | None]:
    """Decide what to do with a request's key; return (outcome, record, our lock token).

    Outcomes: ``first`` and ``resumed`` (we hold the lock), ``replay`` (finished).
    Raises the 422 and 409 errors. A first request costs the INSERT alone: the record is
    built from the values it inserted rather than read back.
    """
    alias = current_alias()
    records = IdempotencyRecord.objects.using(alias)
    for _ in range(_ACQUIRE_ATTEMPTS):
        at, token = now(), uuid.uuid4()
        record_id = _insert_if_absent(claim, at=at, token=token, alias=alias)
        if record_id is not None:
            columns = claim.columns(at=at, token=token)
            columns["principal_id"] = columns.pop("principal")
            return "first", IdempotencyRecord(pk=record_id, **columns), token
        record = records.filter(principal_id=claim.principal_id, key=claim.key).first()
        if record is None:
            continue  # deleted since the INSERT (a discarded 4xx, the purge): claim again
        if (why := claim.matches(record)) is not None:
            decision(claim.scope, "mismatch", idempotency_key=claim.key, mismatch=why)
            raise IdempotencyKeyMismatchError(
                "This Idempotency-Key was used with a different endpoint."
                if why == "endpoint"
                else "This Idempotency-Key was used with a different request body.",
                extra={"mismatch": why},
            )
        if record.is_finished:
            return "replay", record, None
        cutoff = at - lock_timeout()
        if record.locked_at is not None and record.locked_at >= cutoff:
            decision(claim.scope, "in_flight_conflict", idempotency_key=claim.key)
            raise IdempotencyRequestInFlightError(retry_after=_retry_after(record, at))
        # A conditional UPDATE is the check and the takeover in one statement: of several
        # retries racing for an abandoned record exactly one wins.
        taken = (
            records.filter(pk=record.pk)
            .exclude(recovery_point=FINISHED)
            .filter(Q(locked_at__isnull=True) | Q(locked_at__lt=cutoff))
            .update(locked_at=at, lock_token=token, last_run_at=at, attempts=F("attempts") + 1)
        )
        if taken:
            record.refresh_from_db()
            return "resumed", record, token
        # Someone else moved it between our read and our update: look again.
    decision(claim.scope, "in_flight_conflict", idempotency_key=claim.key)
    raise IdempotencyRequestInFlightError(retry_after=1)
