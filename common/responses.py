"""Problem+json responses usable outside DRF (middleware, Django error handlers)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from django.http import HttpRequest, HttpResponse

from common.errors import PROBLEM_CONTENT_TYPE, ApplicationError, problem_body
from common.request_context import current_request_id


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
    """Render a problem document as a plain Django response."""
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


def application_error_response(
    request: HttpRequest | None,
    error: ApplicationError,
    *,
    headers: Mapping[str, str] | None = None,
) -> HttpResponse:
    """Render a domain error outside DRF (middleware, Django handlers, plain views).

    ``headers`` are added to the error's own (for instance RateLimit fields).
    """
    return problem_response(
        request,
        status=error.status,
        code=error.code,
        title=error.title,
        detail=error.detail,
        headers={**error.headers, **(headers or {})},
        extra=error.extra,
    )
