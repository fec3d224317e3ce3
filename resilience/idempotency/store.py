"""Storage: the context a lock holder writes through, stored answers, the clock.

Every write of a lock holder is fenced by its lock token, so an attempt whose lock was
taken over can no longer write (adr/0005). On the hot path the claim
(:mod:`~resilience.idempotency.claims`) is the only round trip of its own that
idempotency costs; the record's later writes travel with the COMMIT of the phase they
belong to (:meth:`IdempotencyContext.advance`, :meth:`IdempotencyContext.finish`,
adr/0014).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DataError, connections, transaction
from django.db.models.sql import UpdateQuery
from django.http import HttpResponse, HttpResponseBase
from django.utils import timezone
from prometheus_client import Counter
from rest_framework.renderers import JSONRenderer

from resilience.db_routing import current_alias
from resilience.idempotency.errors import (
    IdempotencyLockLostError,
)
from resilience.idempotency.keys import REPLAYED_HEADER
from resilience.models import IdempotencyRecord

# One logger for the whole package: the log lines are named after the pattern, not a file.
logger = logging.getLogger("resilience.idempotency")

STARTED = IdempotencyRecord.STARTED
FINISHED = IdempotencyRecord.FINISHED
MAX_POINT_LENGTH = 64

REQUESTS = Counter(
    "resilience_idempotency_requests_total",
    "Requests to idempotent endpoints by the decision taken on their Idempotency-Key.",
    ["scope", "outcome"],
)
RESULTS = Counter(
    "resilience_idempotency_results_total",
    "What happened to a claimed record when the view ended: stored, released (5xx or "
    "crash, resumable), discarded (4xx before execution began) or lock_lost.",
    ["scope", "result"],
)


# --- Clock (injectable, so tests of lock expiry never sleep) ---------------------------------
_clock: Callable[[], datetime] = timezone.now


def now() -> datetime:
    """The current time as the idempotency machinery sees it."""
    return _clock()


@contextmanager
def override_clock(clock: Callable[[], datetime]) -> Iterator[None]:
    """Use ``clock`` instead of the wall clock inside the block (tests only)."""
    global _clock  # noqa: PLW0603 - one process-wide clock, so request threads see it too
    previous, _clock = _clock, clock
    try:
        yield
    finally:
        _clock = previous


def lock_timeout() -> timedelta:
    return timedelta(seconds=settings.IDEMPOTENCY_LOCK_TIMEOUT_S)


# --- Stored responses -------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredResponse:
    """A response as stored on a record: status, exact body text and replayable headers."""

    status: int
    body: str
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(
        cls, status: int, data: Any, *, headers: Mapping[str, str] | None = None
    ) -> StoredResponse:
        """Render ``data`` exactly as the API's ``JSONRenderer`` would (for completers)."""
        body = JSONRenderer().render(data).decode()
        return cls(status, body, {"Content-Type": "application/json", **(headers or {})})

    @classmethod
    def of(cls, response: HttpResponseBase) -> StoredResponse:
        """What is stored of a rendered response: per-request headers are left out."""
        allowed = {name.lower() for name in settings.IDEMPOTENCY_REPLAY_HEADERS}
        allowed.add("content-type")
        headers = {name: value for name, value in response.items() if name.lower() in allowed}
        return cls(response.status_code, response.content.decode(), headers)

    def to_http(self) -> HttpResponse:
        headers = dict(self.headers)
        response = HttpResponse(
            self.body.encode(),
            status=self.status,
            content_type=headers.pop("Content-Type", "application/json"),
        )
        for name, value in headers.items():
            response[name] = value
        return response


def replay(record: IdempotencyRecord) -> HttpResponse:
    response = StoredResponse(
        record.response_status, record.response_body or "", record.response_headers or {}
    ).to_http()
    response[REPLAYED_HEADER] = "true"
    return response


# --- Context handed to the view -----------------------------------------------------------------
class IdempotencyContext:
    """The claimed record, as the view (or a completer) sees it while holding its lock.

    ``recovery_point`` is ``"started"`` for a fresh key, or the last point a previous
    attempt reached; a phased handler skips the phases already done and continues with
    ``resource_id`` (e.g. the order created in phase 1). :mod:`resilience.phases` does this
    from a declaration; a handler written by hand calls :meth:`advance` itself.
    """

    def __init__(self, record: IdempotencyRecord, *, lock_token: uuid.UUID, outcome: str) -> None:
        self.record_id: int = record.pk
        self.key: str = record.key
        self.scope: str = record.scope
        self.principal_id: Any = record.principal_id
        self.recovery_point: str = record.recovery_point
        self.resource_id: str | None = record.resource_id or None
        self.outcome = outcome  # "first", "resumed" or "completer"
        self._lock_token = lock_token
        # Set by the decorator: turns the view's answer into the bytes sent, so that what
        # finish() stores is exactly what the client receives.
        self.render: Callable[[Any], HttpResponseBase] | None = None

    def __repr__(self) -> str:
        return (
            f"<IdempotencyContext {self.scope} key={self.key!r} point={self.recovery_point!r}"
            f" outcome={self.outcome}>"
        )

    @property
    def began_executing(self) -> bool:
        """Whether the handler reached a recovery point (in this or an earlier attempt)."""
        return self.recovery_point != STARTED

    @property
    def finished(self) -> bool:
        return self.recovery_point == FINISHED

    def advance(self, point: str, *, resource_id: Any = None, last: bool = False) -> None:
        """Record that the handler reached ``point``, in the caller's current transaction.

        Call it inside the ``transaction.atomic(using=current_alias())`` block of the phase
        whose work it records: both commit or roll back together. It also renews the lock.
        Raises :class:`IdempotencyLockLostError` (rolling back the phase) when another
        attempt took the lock over. ``last=True`` promises that nothing else runs in the
        block after it: the write then travels with the COMMIT (:func:`_write_and_commit`).
        """
        if not point or len(point) > MAX_POINT_LENGTH or point in (STARTED, FINISHED):
            raise ValueError(
                f"recovery point must be 1 to {MAX_POINT_LENGTH} characters and not "
                f"{STARTED!r} or {FINISHED!r} (the decorator sets those)"
            )
        at = now()
        changes: dict[str, Any] = {"recovery_point": point, "last_run_at": at, "locked_at": at}
        if resource_id is not None:
            changes["resource_id"] = str(resource_id)
        self._fenced_write(changes, last=last)
        self.recovery_point = point
        if resource_id is not None:
            self.resource_id = str(resource_id)
        log("idempotency recovery point", self, point=point)

    def finish(self, response: Any, *, last: bool = False) -> Any:
        """Store ``response`` as the final answer, in the caller's current transaction.

        The last phase's work, the answer and the end of the lock commit together: one
        statement inside that phase's transaction instead of a recovery point there and a
        store after it. ``response`` is a :class:`StoredResponse` (completers) or the
        view's response, rendered here the way the decorator renders it. Returns the
        rendered response. Raises :class:`IdempotencyLockLostError`; ``last`` as in
        :meth:`advance`.
        """
        if isinstance(response, StoredResponse):
            stored, rendered = response, response
        else:
            rendered = self.render(response) if self.render is not None else response
            stored = StoredResponse.of(rendered)
        if stored.status >= 500:
            raise ValueError("a 5xx answer is never stored: raise instead, and a retry resumes")
        self._fenced_write(self._finished_changes(stored), last=last)
        self.recovery_point = FINISHED
        return rendered

    # Writes of the lock holder, all fenced by the lock token ------------------------------
    def _holder(self) -> Any:
        return IdempotencyRecord.objects.using(current_alias()).filter(
            pk=self.record_id, lock_token=self._lock_token
        )

    def _fenced_write(self, changes: dict[str, Any], *, last: bool = False) -> None:
        fenced = self._holder().exclude(recovery_point=FINISHED)
        alias = current_alias()
        if last and _commit_is_next(alias):
            _write_and_commit(fenced, changes, alias=alias, record_id=self.record_id)
            return
        # savepoint=False: inside the phase's transaction this is one more statement of it;
        # outside any transaction it is its own.
        with transaction.atomic(using=alias, savepoint=False):
            if fenced.update(**changes) != 1:
                raise IdempotencyLockLostError(f"lost the lock on record {self.record_id}")

    @staticmethod
    def _finished_changes(response: StoredResponse) -> dict[str, Any]:
        at = now()
        return {
            "response_status": response.status,
            "response_body": response.body,
            "response_headers": dict(response.headers),
            "recovery_point": FINISHED,
            "finished_at": at,
            "last_run_at": at,
            "locked_at": None,
            "lock_token": None,
        }

    def _store(self, response: StoredResponse) -> bool:
        updated = (
            self._holder()
            .exclude(recovery_point=FINISHED)
            .update(**self._finished_changes(response))
        )
        if updated == 1:
            self.recovery_point = FINISHED
        return updated == 1

    def _release(self) -> bool:
        return self._holder().update(locked_at=None, lock_token=None) == 1

    def _discard(self) -> bool:
        deleted, _ = self._holder().filter(recovery_point=STARTED).delete()
        return deleted == 1


def _commit_is_next(alias: str) -> bool:
    """Whether the caller's block is the outermost transaction, healthy, and ours to end."""
    connection = connections[alias]
    return (
        connection.vendor == "postgresql"
        and connection.in_atomic_block
        and len(connection.atomic_blocks) == 1
        and not connection.savepoint_ids
        and not connection.needs_rollback
        # Client-side binding (Django's default) sends the simple query protocol, which
        # carries several statements in one message.
        and not connection.settings_dict["OPTIONS"].get("server_side_binding")
    )


# SQLSTATE division_by_zero: how the fenced write below says "not our record any more".
_LOCK_LOST_SQLSTATE = "22012"


def _write_and_commit(fenced: Any, changes: dict[str, Any], *, alias: str, record_id: int) -> None:
    """The fenced write and the transaction's COMMIT in one round trip (adr/0014).

    The lock check must still decide before the commit: the UPDATE runs in a CTE whose
    ``1 / count(*)`` fails when it matched no row, which aborts the transaction, so the
    COMMIT after it in the same message never happens and the phase rolls back, exactly
    as when :meth:`IdempotencyContext.advance` raises. Django's own COMMIT at the end of
    the block then finds the server idle and psycopg sends nothing.
    """
    query = fenced.query.chain(UpdateQuery)
    query.add_update_values(changes)
    update, params = query.get_compiler(alias).as_sql()
    sql = f"WITH fenced AS ({update} RETURNING 1) SELECT 1 / count(*) FROM fenced; COMMIT"  # noqa: S608 - compiled by the ORM, values are parameters
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute(sql, params)
    except DataError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == _LOCK_LOST_SQLSTATE:
            raise IdempotencyLockLostError(f"lost the lock on record {record_id}") from exc
        raise


def log(event: str, ctx: IdempotencyContext | None = None, **fields: Any) -> None:
    extra: dict[str, Any] = {}
    if ctx is not None:
        extra.update(
            idempotency_key=ctx.key,
            idempotency_scope=ctx.scope,
            idempotency_record=ctx.record_id,
            principal_id=ctx.principal_id,
            recovery_point=ctx.recovery_point,
        )
    extra.update(fields)
    logger.info(event, extra=extra)


def decision(scope: str, outcome: str, **fields: Any) -> None:
    REQUESTS.labels(scope=scope, outcome=outcome).inc()
    logger.info(
        "idempotency decision", extra={"idempotency_scope": scope, "outcome": outcome, **fields}
    )
