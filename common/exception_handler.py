"""The one DRF exception handler: every error becomes an RFC 9457 problem document."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404
from django_ratelimit.exceptions import Ratelimited
from rest_framework import exceptions as drf
from rest_framework.response import Response
from rest_framework.views import set_rollback

from resilience.errors import as_refusal
from resilience.problems import (
    PROBLEM_CONTENT_TYPE,
    ProblemCode,
    ProblemError,
    error_body,
    not_logged_unless,
    problem_body,
)
from resilience.ratelimit.business import ratelimited_to_problem
from resilience.request_id import current_request_id

logger = logging.getLogger(__name__)


def _database_unavailable(exc: Exception) -> Exception:
    # Connection refused, pool timeout, statement timeout: the database cannot serve
    # this request now. Fail fast with a hint instead of a 500.
    logger.warning("database unavailable", extra={"error": type(exc).__name__})
    return as_refusal(exc)


# Django and database exceptions mapped onto DRF or problem ones (every refusal of
# resilience.errors is a ProblemError already). Order matters: Ratelimited is a
# PermissionDenied subclass and must answer 429, never 403.
_TRANSLATIONS: list[tuple[type | tuple[type, ...], Callable[[Any], Exception]]] = [
    (Http404, lambda _: drf.NotFound()),
    (Ratelimited, ratelimited_to_problem),
    (PermissionDenied, lambda _: drf.PermissionDenied()),
    (RequestDataTooBig, lambda _: _BodyTooLarge()),
    ((OperationalError, InterfaceError), _database_unavailable),
]


def translate_exception(exc: Exception) -> Exception:
    """Map Django, database and resilience exceptions onto DRF or domain ones."""
    for types, factory in _TRANSLATIONS:
        if isinstance(exc, types):
            return factory(exc)
    return exc


class _BodyTooLarge(drf.APIException):
    status_code = 413
    default_detail = "The request body is too large."
    default_code = ProblemCode.BODY_TOO_LARGE


def _drf_problem(exc: drf.APIException) -> tuple[dict[str, Any], dict[str, str]]:
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if isinstance(exc, drf.ValidationError):
        code, detail = ProblemCode.INVALID, "The request has invalid fields."
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
    request = context.get("request")
    instance = request.path if request is not None else None
    if isinstance(exc, ProblemError):
        body, headers = error_body(exc, instance=instance), exc.headers
    elif isinstance(exc, drf.APIException):
        body, headers = _drf_problem(exc)
        if instance:
            body["instance"] = instance
        body["request_id"] = current_request_id()
    else:
        return None
    set_rollback()
    response = Response(
        body, status=body["status"], headers=headers, content_type=PROBLEM_CONTENT_TYPE
    )
    return not_logged_unless(exc, response) if isinstance(exc, ProblemError) else response
