"""Middleware that must run before any view: request ids and the body-size guard."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from resilience.problems import ProblemCode, problem_response
from resilience.request_id import bind_request_id

REQUEST_ID_HEADER = "X-Request-ID"


class RequestIdMiddleware:
    """Bind a request id (the caller's ``X-Request-ID`` if valid) and echo it back."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # Stays bound until `request_finished`, so Django's own response log line
        # (written after the middleware chain returns) carries it too.
        request_id, _ = bind_request_id(request.headers.get(REQUEST_ID_HEADER))
        request.request_id = request_id
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response


class BodySizeLimitMiddleware:
    """Refuse a declared body over ``API_MAX_BODY_BYTES`` with 413 before reading it.

    DRF parses from the raw stream, which skips Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE``,
    so the limit is enforced here on ``Content-Length``. Under WSGI a body without a
    length is not read at all, so nothing bypasses the check.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        declared = request.META.get("CONTENT_LENGTH") or "0"
        try:
            length = int(declared)
        except ValueError:
            length = -1
        if length < 0:
            return problem_response(
                request,
                status=400,
                code=ProblemCode.INVALID_CONTENT_LENGTH,
                detail="Content-Length must be a non-negative integer.",
            )
        limit = settings.API_MAX_BODY_BYTES
        if length > limit:
            return problem_response(
                request,
                status=413,
                code=ProblemCode.BODY_TOO_LARGE,
                detail=f"The request body exceeds the limit of {limit} bytes.",
                extra={"max_bytes": limit},
            )
        return self.get_response(request)
