"""One error model for the whole project.

Services raise subclasses of :class:`ApplicationError`, never DRF exceptions. Each carries
a stable machine-readable ``code``, an HTTP status and optional headers (``Retry-After``).
``common.exception_handler`` renders all of them, and every DRF and Django error, as an
RFC 9457 problem document.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

PROBLEM_CONTENT_TYPE = "application/problem+json"


class ApplicationError(Exception):
    """Base of every domain error; subclasses set ``status``, ``code`` and ``title``."""

    status: int = 400
    code: str = "bad_request"
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
    code = "not_found"
    title = "Not found"


class ConflictError(ApplicationError):
    status = 409
    code = "conflict"
    title = "Conflict"


class UnprocessableError(ApplicationError):
    status = 422
    code = "unprocessable"
    title = "Unprocessable request"


class DependencyUnavailableError(ApplicationError):
    """A dependency cannot serve now; the client should retry after ``retry_after`` s."""

    status = 503
    code = "dependency_unavailable"
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
