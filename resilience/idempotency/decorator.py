"""The view decorator: ``@idempotent(scope=...)`` on a DRF view method.

For a request carrying an ``Idempotency-Key`` header the decorator, running after DRF's
authentication and throttles, claims the record ``(request.user, key)``
(:func:`~resilience.idempotency.claims.claim_record`) and then:

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
a key) and hands it to a declared operation (:mod:`resilience.phases`), which records each
phase's recovery point inside that phase's transaction and stores the answer inside the
last one.

What is stored (Stripe's rule, made precise): the view *began executing* once the record
left ``started`` (it reached a recovery point, in this attempt or an earlier one). A
response with status < 400, or a 4xx after execution began, is stored and replayed from
then on. A 4xx before execution began (validation, a business rule checked before any
write) stores nothing and deletes the record, so the client may fix the request and retry
with the same key. A 5xx or an exception stores nothing, releases the lock and keeps the
recovery point, so a retry (or the completer) resumes where the work stopped.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import NotAuthenticated
from rest_framework.request import Request

from resilience.db_routing import current_alias
from resilience.idempotency.claims import Claim, claim_record
from resilience.idempotency.errors import (
    IdempotencyKeyInvalidError,
    IdempotencyKeyRequiredError,
    IdempotencyLockLostError,
    IdempotencyRequestInFlightError,
)
from resilience.idempotency.keys import KEY_HEADER, KEY_PATTERN, parse_key, request_fingerprint
from resilience.idempotency.store import (
    RESULTS,
    IdempotencyContext,
    StoredResponse,
    decision,
    log,
    replay,
)
from resilience.models import IdempotencyRecord

logger = logging.getLogger("resilience.idempotency")

F_ = TypeVar("F_", bound=Callable[..., Any])


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
                    decision(scope, "missing")
                    raise IdempotencyKeyRequiredError(
                        f"This endpoint requires an {KEY_HEADER} header (e.g. a UUIDv4)."
                    )
                return method(view, request, *args, **kwargs)
            try:
                key = parse_key(raw)
            except IdempotencyKeyInvalidError:
                decision(scope, "invalid")
                raise
            user = request.user
            if not getattr(user, "is_authenticated", False):
                # Keys are scoped to a principal; anonymous requests have none.
                raise NotAuthenticated()
            claim = Claim(
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
            outcome, record, token = claim_record(claim)
            if outcome == "replay":
                decision(
                    scope,
                    "replay",
                    idempotency_key=key,
                    idempotency_record=record.pk,
                    response_status=record.response_status,
                )
                return replay(record)
            ctx = IdempotencyContext(record, lock_token=token, outcome=outcome)
            ctx.render = functools.partial(_render, view, request, args, kwargs)
            decision(
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


def _render(view: Any, request: Request, args: tuple, kwargs: dict, response: Any) -> Any:
    """Render with the renderer DRF negotiated for this request, so the stored bytes are
    the bytes sent. DRF's dispatch finalizes again; rendering happens only once."""
    if hasattr(response, "render") and not getattr(response, "is_rendered", True):
        response = view.finalize_response(request, response, *args, **kwargs)
        response.render()
    return response


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
    return _settle(ctx, response)


def _settle(ctx: IdempotencyContext, response: Any) -> Any:
    status = response.status_code
    if ctx.finished:
        # Stored by the last phase, in its own transaction (IdempotencyContext.finish).
        _end(ctx, "stored", lambda: True, status=status)
        return response
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
    response = ctx.render(response)
    stored = StoredResponse.of(response)
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
    log("idempotency result", ctx, result=result, **fields)


def _after_lock_lost(ctx: IdempotencyContext) -> HttpResponse:
    """The attempt was overtaken: answer like a concurrent duplicate would be answered."""
    RESULTS.labels(scope=ctx.scope, result="lock_lost").inc()
    log("idempotency lock lost", ctx)
    record = IdempotencyRecord.objects.using(current_alias()).filter(pk=ctx.record_id).first()
    if record is not None and record.is_finished:
        return replay(record)
    raise IdempotencyRequestInFlightError(retry_after=settings.IDEMPOTENCY_CONFLICT_RETRY_AFTER_S)
