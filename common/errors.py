"""One error model for the whole project.

Services raise subclasses of :class:`ApplicationError`, never DRF exceptions. Each carries
a stable machine-readable ``code``, an HTTP status and optional headers (``Retry-After``).
``common.exception_handler`` renders all of them, and every DRF and Django error, as an
RFC 9457 problem document.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from http import HTTPStatus
from typing import Any

PROBLEM_CONTENT_TYPE = "application/problem+json"


class ErrorCode(StrEnum):
    """Every stable ``code`` a problem document can carry: the one list.

    Error classes, middleware and handlers take their code from here; the OpenAPI
    schema lists these values (``common.schema``), and the contract tests fail on an
    answer whose code is not one of them. A member is a ``str``, so it compares equal
    to (and serialises as) its value.
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
    DEPENDENCY_UNAVAILABLE = "dependency_unavailable"
    SERVER_ERROR = "server_error"
    # Rate limiting (resilience.ratelimit).
    RATE_LIMITED = "rate_limited"
    RATE_LIMITER_UNAVAILABLE = "rate_limiter_unavailable"
    # Load shedding (resilience.concurrency).
    OVERLOADED = "overloaded"
    # Idempotency keys (resilience.idempotency).
    IDEMPOTENCY_KEY_INVALID = "idempotency_key_invalid"
    IDEMPOTENCY_KEY_REQUIRED = "idempotency_key_required"
    IDEMPOTENCY_KEY_MISMATCH = "idempotency_key_mismatch"
    IDEMPOTENCY_REQUEST_IN_FLIGHT = "idempotency_request_in_flight"
    # Accounts.
    EMAIL_TAKEN = "email_taken"
    INVALID_CREDENTIALS = "invalid_credentials"
    # Orders.
    INVALID_ORDER_TRANSITION = "invalid_order_transition"
    # Refunds (orders.refunds).
    ORDER_NOT_REFUNDABLE = "order_not_refundable"
    REFUND_EXCEEDS_REMAINING = "refund_exceeds_remaining"
    REFUND_CURRENCY_MISMATCH = "refund_currency_mismatch"
    # Webhooks.
    WEBHOOK_TARGET_FORBIDDEN = "webhook_target_forbidden"
    WEBHOOK_ENDPOINT_LIMIT = "webhook_endpoint_limit"
    WEBHOOK_REPLAY_REFUSED = "webhook_replay_refused"


class ApplicationError(Exception):
    """Base of every domain error; subclasses set ``status``, ``code`` and ``title``."""

    status: int = 400
    code: str = ErrorCode.BAD_REQUEST
    title: str = "Bad request"

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


class NotFoundError(ApplicationError):
    status = 404
    code = ErrorCode.NOT_FOUND
    title = "Not found"


class ConflictError(ApplicationError):
    status = 409
    code = ErrorCode.CONFLICT
    title = "Conflict"


class UnprocessableError(ApplicationError):
    status = 422
    code = ErrorCode.UNPROCESSABLE
    title = "Unprocessable request"


class DependencyUnavailableError(ApplicationError):
    """A dependency cannot serve now; the client should retry after ``retry_after`` s."""

    status = 503
    code = ErrorCode.DEPENDENCY_UNAVAILABLE
    title = "Service temporarily unavailable"

    def __init__(self, dependency: str, *, retry_after: int, detail: str | None = None) -> None:
        self.dependency = dependency
        self.retry_after = retry_after
        super().__init__(
            detail or f"{dependency} is unavailable; retry later.",
            headers={"Retry-After": str(retry_after)},
            extra={"dependency": dependency},
        )


def problem_body(
    *,
    status: int,
    code: str,
    title: str | None = None,
    detail: str | None = None,
    instance: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build an RFC 9457 problem object; ``type`` points at our documented error codes."""
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
