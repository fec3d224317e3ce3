"""Problem documents (RFC 9457): the library's error model.

Every refusal, conflict or bad input the library decides is a :class:`ProblemError`:
it carries its HTTP status, a stable machine ``code``, a title, a detail and optional
headers (``Retry-After``), so one renderer turns any of them into
``application/problem+json`` wherever it surfaces (a DRF view, a middleware, a plain
Django view). The project's own errors subclass it too; its exception handler renders
the lot. The ``code`` values the library itself emits are :class:`ProblemCode`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from http import HTTPStatus
from typing import Any, TypeVar

from django.http import HttpRequest, HttpResponse

from resilience.request_id import current_request_id

R = TypeVar("R", bound=HttpResponse)

PROBLEM_CONTENT_TYPE = "application/problem+json"


class ProblemCode(StrEnum):
    """The stable ``code`` values of the library's problems, and DRF's generic ones.

    A project adds its own codes beside these (its schema lists both). A member is a
    ``str``, so it compares equal to (and serialises as) its value.
    """

    # Generic answers of the error model and of DRF (``default_code`` of its exceptions).
    BAD_REQUEST = "bad_request"
    INVALID = "invalid"  # field validation; ``errors`` says which fields
    PARSE_ERROR = "parse_error"
    INVALID_CONTENT_LENGTH = "invalid_content_length"
    BODY_TOO_LARGE = "body_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    NOT_ACCEPTABLE = "not_acceptable"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_AUTHENTICATED = "not_authenticated"
    AUTHENTICATION_FAILED = "authentication_failed"
    PERMISSION_DENIED = "permission_denied"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    UNPROCESSABLE = "unprocessable"
    # Refusals (resilience.errors): a dependency, a quota or the server says "not now".
    DEPENDENCY_UNAVAILABLE = "dependency_unavailable"
    SERVER_ERROR = "server_error"
    RATE_LIMITED = "rate_limited"
    RATE_LIMITER_UNAVAILABLE = "rate_limiter_unavailable"
    OVERLOADED = "overloaded"
    # Idempotency keys (resilience.idempotency).
    IDEMPOTENCY_KEY_INVALID = "idempotency_key_invalid"
    IDEMPOTENCY_KEY_REQUIRED = "idempotency_key_required"
    IDEMPOTENCY_KEY_MISMATCH = "idempotency_key_mismatch"
    IDEMPOTENCY_REQUEST_IN_FLIGHT = "idempotency_request_in_flight"


class ProblemError(Exception):
    """Base of every error answered as a problem; subclasses set ``status``, ``code``, ``title``."""

    status: int = 400
    code: str = ProblemCode.BAD_REQUEST
    title: str = "Bad request"
    # Whether Django's request logger writes the answer (WARNING for 4xx, ERROR for 5xx).
    # Documented refusals set False: they come by the thousand exactly when the process is
    # overloaded or a dependency is down, and a log line costs as much CPU as the refusal
    # (postgres-down: refusals took 0.2 s in the seconds the logs were busiest). Their
    # metrics and status counts tell instead.
    logged: bool = True

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.detail = detail or self.title
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        super().__init__(self.detail)


class NotFoundError(ProblemError):
    status = 404
    code = ProblemCode.NOT_FOUND
    title = "Not found"


class ConflictError(ProblemError):
    status = 409
    code = ProblemCode.CONFLICT
    title = "Conflict"


class UnprocessableError(ProblemError):
    status = 422
    code = ProblemCode.UNPROCESSABLE
    title = "Unprocessable request"


def problem_body(
    *,
    status: int,
    code: str,
    title: str | None = None,
    detail: str | None = None,
    instance: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build an RFC 9457 problem object; ``type`` points at the documented error codes."""
    body: dict[str, Any] = {
        "type": f"/api/problems/{code}",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "code": code,
        "detail": detail or title or HTTPStatus(status).phrase,
    }
    if instance:
        body["instance"] = instance
    if extra:
        body.update(extra)
    return body


def error_body(error: ProblemError, *, instance: str | None = None) -> dict[str, Any]:
    """The problem document of ``error``, with the current request id."""
    body = problem_body(
        status=error.status,
        code=error.code,
        title=error.title,
        detail=error.detail,
        instance=instance,
        extra=error.extra,
    )
    body["request_id"] = current_request_id()
    return body


def problem_response(
    request: HttpRequest | None,
    *,
    status: int,
    code: str,
    title: str | None = None,
    detail: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> HttpResponse:
    """Render a problem document as a plain Django response (outside DRF)."""
    body = problem_body(
        status=status,
        code=code,
        title=title,
        detail=detail,
        instance=request.path if request is not None else None,
        extra={**(extra or {}), "request_id": current_request_id()},
    )
    response = HttpResponse(json.dumps(body), status=status, content_type=PROBLEM_CONTENT_TYPE)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def error_response(
    request: HttpRequest | None,
    error: ProblemError,
    *,
    headers: Mapping[str, str] | None = None,
) -> HttpResponse:
    """Render ``error`` outside DRF (middleware, Django handlers, plain views).

    ``headers`` are added to the error's own (for instance RateLimit fields).
    """
    body = error_body(error, instance=request.path if request is not None else None)
    response = HttpResponse(
        json.dumps(body), status=error.status, content_type=PROBLEM_CONTENT_TYPE
    )
    for name, value in {**error.headers, **(headers or {})}.items():
        response[name] = value
    return not_logged_unless(error, response)


def not_logged_unless(error: ProblemError, response: R) -> R:
    """Keep Django's request logger off ``response`` when ``error`` is not ``logged``."""
    if not error.logged:
        response._has_been_logged = True  # type: ignore[attr-defined]  # log_response's flag
    return response
