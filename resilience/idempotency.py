"""Idempotency keys with Stripe's semantics, stored in Postgres, resumable in phases.

A DRF view method opts in with :func:`idempotent`. For a request carrying an
``Idempotency-Key`` header the decorator, running after DRF's authentication and
throttles, claims the record ``(request.user, key)`` with one ``INSERT ... ON CONFLICT DO
NOTHING`` and then:

=======================================  ==============================================
state of the record                      answer
=======================================  ==============================================
none (we inserted it)                    run the view (outcome ``first``)
another endpoint, scope or payload       422 ``idempotency_key_mismatch``
finished                                 the stored status, body and allow-listed
                                         headers with ``Idempotent-Replayed: true``
locked, lock younger than the timeout    409 ``idempotency_request_in_flight`` with
                                         ``Retry-After``; nothing stored
unfinished and unlocked, or lock         take the lock over (conditional UPDATE) and run
expired                                  the view from ``recovery_point`` (``resumed``)
=======================================  ==============================================

The view gets an :class:`IdempotencyContext` as ``request.idempotency`` (``None`` without
a key) and moves it through its phases with :meth:`IdempotencyContext.advance` inside
each phase's transaction, so a phase's work and its recovery point commit together.

What is stored (Stripe's rule, made precise): the view *began executing* once the record
left ``started`` (it called ``advance()``, in this attempt or an earlier one). A response
with status < 400, or a 4xx after execution began, is stored and replayed from then on.
A 4xx before execution began (validation, a business rule checked before any write)
stores nothing and deletes the record, so the client may fix the request and retry with
the same key. A 5xx or an exception stores nothing, releases the lock and keeps the
recovery point, so a retry (or the completer) resumes where the work stopped.

See docs/patterns/idempotency-keys.md and adr/0005-idempotency-storage.md.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import connections, transaction
from django.db.models import F, Q, Subquery
from django.http import HttpResponse, HttpResponseBase
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from prometheus_client import Counter
from rest_framework.exceptions import NotAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.utils.encoders import JSONEncoder

from resilience.db_routing import current_alias
from resilience.models import IdempotencyRecord
from resilience.problems import ConflictError, ProblemCode, ProblemError, UnprocessableError

logger = logging.getLogger(__name__)

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
STARTED = IdempotencyRecord.STARTED
FINISHED = IdempotencyRecord.FINISHED
MAX_KEY_LENGTH = 255
MAX_POINT_LENGTH = 64
# Visible ASCII (0x21-0x7E): UUIDs, ULIDs and base64 fit; spaces do not, since HTTP
# strips leading and trailing whitespace from header values and would make "a" and
# "a " the same key on the wire but not in the table.
_VALID_KEY = re.compile(r"[\x21-\x7e]{1,255}")
# What parse_key accepts, as one regular expression for the OpenAPI schema: a bare token
# of 1 to 255 visible ASCII characters that is not itself a quoted string, or an RFC 8941
# string (quotes around 1 to 255 visible characters without quote or backslash).
KEY_PATTERN = (
    r'^(?:[\x21-\x7E]|[\x21\x23-\x7E][\x21-\x7E]{1,254}|"[\x21-\x7E]{0,253}[\x21\x23-\x7E]'
    r'|"[\x21\x23-\x5B\x5D-\x7E]{1,255}")$'
)
# Claim attempts when the record vanishes or changes between our statements.
_ACQUIRE_ATTEMPTS = 3

F_ = TypeVar("F_", bound=Callable[..., Any])

# --- Metrics ------------------------------------------------------------------------------
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
COMPLETER_RUNS = Counter(
    "resilience_idempotency_completer_runs_total",
    "Stale records the completer re-drove, by result.",
    ["scope", "result"],
)
PURGED = Counter(
    "resilience_idempotency_purged_records_total",
    "Idempotency records deleted after the retention period.",
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


def _lock_timeout() -> timedelta:
    return timedelta(seconds=settings.IDEMPOTENCY_LOCK_TIMEOUT_S)


# --- Errors (rendered as problem+json by common.exception_handler) --------------------------
class IdempotencyKeyInvalidError(ProblemError):
    code = ProblemCode.IDEMPOTENCY_KEY_INVALID
    title = "Invalid Idempotency-Key"


class IdempotencyKeyRequiredError(ProblemError):
    code = ProblemCode.IDEMPOTENCY_KEY_REQUIRED
    title = "Idempotency-Key required"


class IdempotencyKeyMismatchError(UnprocessableError):
    code = ProblemCode.IDEMPOTENCY_KEY_MISMATCH
    title = "Idempotency-Key reused for a different request"


class IdempotencyRequestInFlightError(ConflictError):
    code = ProblemCode.IDEMPOTENCY_REQUEST_IN_FLIGHT
    title = "A request with this Idempotency-Key is in progress"

    def __init__(self, *, retry_after: int) -> None:
        super().__init__(
            "The first request with this Idempotency-Key has not finished; retry later.",
            headers={"Retry-After": str(retry_after)},
        )


class IdempotencyLockLostError(Exception):
    """The record's lock was taken over by another attempt; this attempt must stop.

    Raised by :meth:`IdempotencyContext.advance` inside the caller's transaction, so the
    phase's work rolls back with it. The decorator turns it into a replay or a 409.
    """


# --- Key and fingerprint ----------------------------------------------------------------------
def parse_key(raw: str) -> str:
    """Validate an ``Idempotency-Key`` header value and return the key.

    Accepts a bare token (Stripe) or an RFC 8941 string (the IETF draft sends
    ``"8e03978e-..."``); both name the same key.
    """
    key = raw
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        key = raw[1:-1]
        if '"' in key or "\\" in key:
            raise IdempotencyKeyInvalidError("Idempotency-Key must not contain escapes.")
    if not _VALID_KEY.fullmatch(key):
        raise IdempotencyKeyInvalidError(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} visible ASCII characters "
            "(0x21-0x7E), e.g. a UUID."
        )
    return key


def _canonical_data(data: Any) -> Any:
    if hasattr(data, "lists"):  # a QueryDict (form or query string): keep repeated values
        return dict(data.lists())
    return data


def request_fingerprint(*, method: str, path: str, query: Any, body: Any) -> str:
    """SHA-256 hex over method, path, query and body as canonical JSON.

    Canonical: sorted keys, no whitespace, so key order and formatting of the client's
    JSON do not matter while any change of a value does.
    """
    canonical = json.dumps(
        [method.upper(), path, _canonical_data(query), _canonical_data(body)],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        cls=JSONEncoder,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


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


def _replay(record: IdempotencyRecord) -> HttpResponse:
    response = StoredResponse(
        record.response_status, record.response_body or "", record.response_headers or {}
    ).to_http()
    response[REPLAYED_HEADER] = "true"
    return response


def _replayable_headers(response: HttpResponseBase) -> dict[str, str]:
    """Headers worth replaying; per-request ones (RateLimit, request id) are not stored."""
    allowed = {name.lower() for name in settings.IDEMPOTENCY_REPLAY_HEADERS}
    allowed.add("content-type")
    return {name: value for name, value in response.items() if name.lower() in allowed}


# --- Context handed to the view -----------------------------------------------------------------
class IdempotencyContext:
    """The claimed record, as the view (or a completer) sees it while holding its lock.

    ``recovery_point`` is ``"started"`` for a fresh key, or the last point a previous
    attempt reached; a phased handler skips the phases already done and continues with
    ``resource_id`` (e.g. the order created in phase 1).
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

    def __repr__(self) -> str:
        return (
            f"<IdempotencyContext {self.scope} key={self.key!r} point={self.recovery_point!r}"
            f" outcome={self.outcome}>"
        )

    @property
    def began_executing(self) -> bool:
        """Whether the handler reached a recovery point (in this or an earlier attempt)."""
        return self.recovery_point != STARTED

    def advance(self, point: str, *, resource_id: Any = None) -> None:
        """Record that the handler reached ``point``, in the caller's current transaction.

        Call it inside the ``transaction.atomic(using=current_alias())`` block of the phase
        whose work it records: both commit or roll back together. It also renews the lock.
        Raises :class:`IdempotencyLockLostError` (rolling back the phase) when another
        attempt took the lock over.
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
        alias = current_alias()
        # savepoint=False: inside the phase's transaction this is one more statement of it;
        # outside any transaction it is its own.
        with transaction.atomic(using=alias, savepoint=False):
            updated = (
                IdempotencyRecord.objects.using(alias)
                .filter(pk=self.record_id, lock_token=self._lock_token)
                .exclude(recovery_point=FINISHED)
                .update(**changes)
            )
            if updated != 1:
                raise IdempotencyLockLostError(f"lost the lock on record {self.record_id}")
        self.recovery_point = point
        if resource_id is not None:
            self.resource_id = str(resource_id)
        _log("idempotency recovery point", self, point=point)

    def downstream_key(self, suffix: str) -> str:
        """A deterministic idempotency key for a downstream call made under this key.

        The same (principal, key, suffix) always gives the same 64-hex-character key, so a
        resumed attempt repeats the downstream call with the key it used the first time.
        """
        material = f"{self.principal_id}\x1f{self.key}\x1f{self.scope}\x1f{suffix}"
        return hashlib.sha256(material.encode()).hexdigest()

    # Writes of the lock holder, all fenced by the lock token ------------------------------
    def _holder(self) -> Any:
        return IdempotencyRecord.objects.using(current_alias()).filter(
            pk=self.record_id, lock_token=self._lock_token
        )

    def _store(self, response: StoredResponse) -> bool:
        at = now()
        updated = (
            self._holder()
            .exclude(recovery_point=FINISHED)
            .update(
                response_status=response.status,
                response_body=response.body,
                response_headers=dict(response.headers),
                recovery_point=FINISHED,
                finished_at=at,
                last_run_at=at,
                locked_at=None,
                lock_token=None,
            )
        )
        if updated == 1:
            self.recovery_point = FINISHED
        return updated == 1

    def _release(self) -> bool:
        return self._holder().update(locked_at=None, lock_token=None) == 1

    def _discard(self) -> bool:
        deleted, _ = self._holder().filter(recovery_point=STARTED).delete()
        return deleted == 1


def _log(event: str, ctx: IdempotencyContext | None = None, **fields: Any) -> None:
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


def _decision(scope: str, outcome: str, **fields: Any) -> None:
    REQUESTS.labels(scope=scope, outcome=outcome).inc()
    logger.info(
        "idempotency decision", extra={"idempotency_scope": scope, "outcome": outcome, **fields}
    )


# --- Claiming a record ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Claim:
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


def _insert_if_absent(claim: _Claim, *, at: datetime, token: uuid.UUID, alias: str) -> int | None:
    """INSERT the record unless (principal, key) exists; return its id if we inserted it.

    One statement decides the race: the unique constraint, not a prior read, picks the one
    winner among concurrent first requests.
    """
    meta = IdempotencyRecord._meta
    columns = {
        "principal": claim.principal_id,
        "key": claim.key,
        "scope": claim.scope,
        "request_method": claim.method,
        "request_path": claim.path,
        "fingerprint": claim.fingerprint,
        "recovery_point": STARTED,
        "resource_id": "",
        "response_body": "",
        "locked_at": at,
        "lock_token": token,
        "last_run_at": at,
        "attempts": 1,
        "created_at": at,
    }
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
    remaining = (record.locked_at + _lock_timeout() - at).total_seconds()
    return max(1, min(settings.IDEMPOTENCY_CONFLICT_RETRY_AFTER_S, math.ceil(remaining)))


def _claim(claim: _Claim) -> tuple[str, IdempotencyRecord, uuid.UUID | None]:
    """Decide what to do with a request's key; return (outcome, record, our lock token).

    Outcomes: ``first`` and ``resumed`` (we hold the lock), ``replay`` (finished).
    Raises the 422 and 409 errors.
    """
    alias = current_alias()
    records = IdempotencyRecord.objects.using(alias)
    for _ in range(_ACQUIRE_ATTEMPTS):
        at, token = now(), uuid.uuid4()
        record_id = _insert_if_absent(claim, at=at, token=token, alias=alias)
        if record_id is not None:
            return "first", records.get(pk=record_id), token
        record = records.filter(principal_id=claim.principal_id, key=claim.key).first()
        if record is None:
            continue  # deleted since the INSERT (a discarded 4xx, the purge): claim again
        if (why := claim.matches(record)) is not None:
            _decision(claim.scope, "mismatch", idempotency_key=claim.key, mismatch=why)
            raise IdempotencyKeyMismatchError(
                "This Idempotency-Key was used with a different endpoint."
                if why == "endpoint"
                else "This Idempotency-Key was used with a different request body.",
                extra={"mismatch": why},
            )
        if record.is_finished:
            return "replay", record, None
        cutoff = at - _lock_timeout()
        if record.locked_at is not None and record.locked_at >= cutoff:
            _decision(claim.scope, "in_flight_conflict", idempotency_key=claim.key)
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
    _decision(claim.scope, "in_flight_conflict", idempotency_key=claim.key)
    raise IdempotencyRequestInFlightError(retry_after=1)


# --- The decorator --------------------------------------------------------------------------------
def key_parameter(*, required: bool = False) -> OpenApiParameter:
    """The documented ``Idempotency-Key`` header, with our retention and conflict rules."""
    hours = settings.IDEMPOTENCY_RETENTION_S // 3600
    return OpenApiParameter(
        name=KEY_HEADER,
        type=OpenApiTypes.STR,
        location=OpenApiParameter.HEADER,
        required=required,
        pattern=KEY_PATTERN,
        description=(
            "Makes the request safe to retry. 1 to 255 visible ASCII characters (a UUIDv4 "
            "is recommended), scoped to the authenticated user. A retry with the same key "
            "returns the first response with `Idempotent-Replayed: true` and does not run "
            "the operation again. Reusing a key for another body or endpoint: 422; while "
            "the first request still runs: 409 with `Retry-After`; a malformed key: 400. "
            "Validation errors and 5xx answers are not stored. Keys are kept at least "
            f"{hours} hours, then forgotten (a pruned key starts a new request)."
        ),
    )


def idempotent(*, scope: str, required: bool = False) -> Callable[[F_], F_]:
    """Make a DRF view method honour ``Idempotency-Key`` (Stripe semantics, see module doc).

    ``scope`` names the operation (e.g. ``"orders.create"``); a key used for one scope is
    refused on another. ``required=True``, or listing the scope in the setting
    ``IDEMPOTENCY_REQUIRED_SCOPES``, makes a missing key a 400. The wrapped method runs
    after DRF's authentication, permissions and throttles; it reads
    ``request.idempotency`` (an :class:`IdempotencyContext`, or None without a key).
    """

    def decorate(method: F_) -> F_:
        @functools.wraps(method)
        def wrapper(view: Any, request: Request, *args: Any, **kwargs: Any) -> Any:
            request.idempotency = None
            raw = request.headers.get(KEY_HEADER)
            if raw is None:
                if required or scope in settings.IDEMPOTENCY_REQUIRED_SCOPES:
                    _decision(scope, "missing")
                    raise IdempotencyKeyRequiredError(
                        f"This endpoint requires an {KEY_HEADER} header (e.g. a UUIDv4)."
                    )
                return method(view, request, *args, **kwargs)
            try:
                key = parse_key(raw)
            except IdempotencyKeyInvalidError:
                _decision(scope, "invalid")
                raise
            user = request.user
            if not getattr(user, "is_authenticated", False):
                # Keys are scoped to a principal; anonymous requests have none.
                raise NotAuthenticated()
            claim = _Claim(
                principal_id=user.pk,
                key=key,
                scope=scope,
                method=request.method,
                path=request.path,
                fingerprint=request_fingerprint(
                    method=request.method,
                    path=request.path,
                    query=request.query_params,
                    body=request.data,
                ),
            )
            outcome, record, token = _claim(claim)
            if outcome == "replay":
                _decision(
                    scope,
                    "replay",
                    idempotency_key=key,
                    idempotency_record=record.pk,
                    response_status=record.response_status,
                )
                return _replay(record)
            ctx = IdempotencyContext(record, lock_token=token, outcome=outcome)
            _decision(
                scope,
                outcome,
                idempotency_key=key,
                idempotency_record=record.pk,
                recovery_point=record.recovery_point,
                attempts=record.attempts,
            )
            request.idempotency = ctx
            return _run(view, request, method=method, ctx=ctx, args=args, kwargs=kwargs)

        return extend_schema(parameters=[key_parameter(required=required)])(wrapper)

    return decorate


def _run(
    view: Any,
    request: Request,
    *,
    method: Callable[..., Any],
    ctx: IdempotencyContext,
    args: tuple,
    kwargs: dict,
) -> Any:
    try:
        try:
            response = method(view, request, *args, **kwargs)
        except IdempotencyLockLostError:
            raise
        except Exception as exc:  # noqa: BLE001 - rendered exactly as DRF's dispatch would
            # DRF's own handling (problem+json via the exception handler); anything it does
            # not handle is re-raised from here and released below.
            response = view.handle_exception(exc)
    except IdempotencyLockLostError:
        return _after_lock_lost(ctx)
    except BaseException:
        # Includes SystemExit from a gunicorn worker timeout: free the key at once rather
        # than after the lock timeout. The recovery point stays.
        _end(ctx, "released", ctx._release, reason="exception")
        raise
    return _settle(view, request, ctx=ctx, response=response, args=args, kwargs=kwargs)


def _settle(
    view: Any,
    request: Request,
    *,
    ctx: IdempotencyContext,
    response: Any,
    args: tuple,
    kwargs: dict,
) -> Any:
    status = response.status_code
    if status >= 500:
        _end(ctx, "released", ctx._release, status=status)
        return response
    if status >= 400 and not ctx.began_executing:
        _end(ctx, "discarded", ctx._discard, status=status)
        return response
    if getattr(response, "streaming", False):
        logger.warning("idempotent view returned a streaming response; not stored")
        _end(ctx, "released", ctx._release, status=status)
        return response
    if hasattr(response, "render") and not getattr(response, "is_rendered", True):
        # Render with the renderer DRF negotiated for this request, so the stored bytes are
        # the bytes sent. DRF's dispatch finalizes again; rendering happens only once.
        response = view.finalize_response(request, response, *args, **kwargs)
        response.render()
    stored = StoredResponse(status, response.content.decode(), _replayable_headers(response))
    _end(ctx, "stored", lambda: ctx._store(stored), status=status)
    return response


def _end(ctx: IdempotencyContext, result: str, write: Callable[[], bool], **fields: Any) -> None:
    """Finish an attempt with ``write``; a lost lock or a failing database is only logged."""
    try:
        done = write()
    except Exception:  # best effort: never mask the view's own answer or error
        # Database down, breaker open: the lock then expires on its own and the client's
        # retry resumes after the timeout.
        logger.exception("idempotency record update failed", extra={"result": result})
        done = False
    result = result if done else "lock_lost"
    RESULTS.labels(scope=ctx.scope, result=result).inc()
    _log("idempotency result", ctx, result=result, **fields)


def _after_lock_lost(ctx: IdempotencyContext) -> HttpResponse:
    """The attempt was overtaken: answer like a concurrent duplicate would be answered."""
    RESULTS.labels(scope=ctx.scope, result="lock_lost").inc()
    _log("idempotency lock lost", ctx)
    record = IdempotencyRecord.objects.using(current_alias()).filter(pk=ctx.record_id).first()
    if record is not None and record.is_finished:
        return _replay(record)
    raise IdempotencyRequestInFlightError(retry_after=settings.IDEMPOTENCY_CONFLICT_RETRY_AFTER_S)


# --- Completer registry and maintenance -----------------------------------------------------
Completer = Callable[[IdempotencyContext], StoredResponse | None]
_COMPLETERS: dict[str, Completer] = {}


def register_completer(scope: str, func: Completer | None = None) -> Any:
    """Register ``func`` to re-drive stale records of ``scope``; usable as a decorator.

    ``func(ctx)`` runs in a worker with the record's lock held. It continues from
    ``ctx.recovery_point`` exactly as a resumed request would (calling ``ctx.advance()``
    in each phase's transaction) and returns the final :class:`StoredResponse` to store,
    or None to leave the record for a later run, the client's retry or the purge.
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
        & (Q(locked_at__isnull=True) | Q(locked_at__lt=at - _lock_timeout()))
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
        _log("idempotency completer", ctx, result=result)
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
        .filter(locked_at__lt=now() - _lock_timeout())
        .update(locked_at=None, lock_token=None)
    )
    logger.info("idempotency stale locks released", extra={"released": released})
    return released


__all__ = [
    "KEY_HEADER",
    "REPLAYED_HEADER",
    "IdempotencyContext",
    "IdempotencyKeyInvalidError",
    "IdempotencyKeyMismatchError",
    "IdempotencyKeyRequiredError",
    "IdempotencyLockLostError",
    "IdempotencyRequestInFlightError",
    "StoredResponse",
    "idempotency_locks_release_stale",
    "idempotency_records_complete_stale",
    "idempotency_records_purge_expired",
    "idempotent",
    "key_parameter",
    "override_clock",
    "register_completer",
    "request_fingerprint",
    "unregister_completer",
]
