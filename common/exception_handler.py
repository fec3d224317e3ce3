"""The one DRF exception handler: every error becomes an RFC 9457 problem document."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404
from django_ratelimit.exceptions import Ratelimited
from rest_framework import exceptions as drf
from rest_framework.response import Response
from rest_framework.views import set_rollback

from common.errors import (
    PROBLEM_CONTENT_TYPE,
    ApplicationError,
    DependencyUnavailableError,
    ErrorCode,
    problem_body,
)
from common.request_context import current_request_id
from resilience.breakers import BreakerOpenError
from resilience.bulkhead import BulkheadFullError
from resilience.deadline import DeadlineExceededError
from resilience.ratelimit.business import ratelimited_to_problem
from resilience.ssrf import ResolutionTimeoutError

logger = logging.getLogger(__name__)


def _database_unavailable(exc: Exception) -> Exception:
    # Connection refused, pool timeout, statement timeout: the database cannot serve
    # this request now. Fail fast with a hint instead of a 500.
    logger.warning("database unavailable", extra={"error": type(exc).__name__})
    return DependencyUnavailableError(
        "postgres", retry_after=settings.API_UNAVAILABLE_RETRY_AFTER_S
    )


# Django, database and resilience exceptions mapped onto DRF or domain ones. Order
# matters: Ratelimited is a PermissionDenied subclass and must answer 429, never 403.
_TRANSLATIONS: list[tuple[type | tuple[type, ...], Callable[[Any], Exception]]] = [
    (Http404, lambda _: drf.NotFound()),
    (Ratelimited, ratelimited_to_problem),
    (PermissionDenied, lambda _: drf.PermissionDenied()),
    (RequestDataTooBig, lambda _: _BodyTooLarge()),
    (
        BreakerOpenError,
        lambda exc: DependencyUnavailableError(
            exc.dependency, retry_after=_whole_seconds(exc.retry_after_s)
        ),
    ),
    (
        (BulkheadFullError, DeadlineExceededError, ResolutionTimeoutError),
        lambda exc: DependencyUnavailableError(
            exc.dependency, retry_after=settings.API_UNAVAILABLE_RETRY_AFTER_S
        ),
    ),
    ((OperationalError, InterfaceError), _database_unavailable),
]


def translate_exception(exc: Exception) -> Exception:
    """Map Django, database and resilience exceptions onto DRF or domain ones."""
    for types, factory in _TRANSLATIONS:
        if isinstance(exc, types):
            return factory(exc)
    return exc


def _whole_seconds(seconds: float) -> int:
    """``Retry-After`` is whole seconds, never 0 (a client must not retry at once)."""
    return max(1, math.ceil(seconds))


class _BodyTooLarge(drf.APIException):
    status_code = 413
    default_detail = "The request body is too large."
    default_code = ErrorCode.BODY_TOO_LARGE


def _drf_problem(exc: drf.APIException) -> tuple[dict[str, Any], dict[str, str]]:
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if isinstance(exc, drf.ValidationError):
        code, detail = ErrorCode.INVALID, "The request has invalid fields."
        extra["errors"] = (
            exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        )
    else:
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else exc.default_code
        detail = str(exc.detail)
    if isinstance(exc, drf.NotAuthenticated | drf.AuthenticationFailed):
        headers["WWW-Authenticate"] = 'Token realm="api"'
    if getattr(exc, "wait", None) is not None:
        headers["Retry-After"] = str(max(1, int(exc.wait + 0.999)))
    body = problem_body(status=exc.status_code, code=code, detail=detail, extra=extra)
    return body, headers


def problem_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Render ``exc`` as problem+json; return None (a 500) only for unexpected errors."""
    exc = translate_exception(exc)
    if isinstance(exc, ApplicationError):
        body = problem_body(
            status=exc.status, code=exc.code, title=exc.title, detail=exc.detail, extra=exc.extra
        )
        headers = exc.headers
    elif isinstance(exc, drf.APIException):
        body, headers = _drf_problem(exc)
    else:
        return None
    request = context.get("request")
    if request is not None:
        body["instance"] = request.path
    body["request_id"] = current_request_id()
    set_rollback()
    return Response(body, status=body["status"], headers=headers, content_type=PROBLEM_CONTENT_TYPE)
