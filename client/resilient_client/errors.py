"""Typed errors: one class per kind of answer, each carrying the problem's stable ``code``."""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Base of every error this client raises."""


class ApiError(ClientError):
    """The server answered with a problem document (RFC 9457).

    ``code`` is the stable machine-readable reason (``invalid``, ``email_taken``,
    ``rate_limited``, ...): branch on it, never on the message.
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        problem: dict[str, Any],
        *,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.problem = problem
        self.retry_after = retry_after
        self.errors: dict[str, Any] = problem.get("errors") or {}
        self.request_id: str | None = problem.get("request_id")
        super().__init__(f"{status} {code}: {detail}")


class BadRequestError(ApiError):
    """400: malformed or invalid fields (``errors`` says which)."""


class AuthenticationError(ApiError):
    """401: no valid credentials."""


class PermissionDeniedError(ApiError):
    """403."""


class NotFoundError(ApiError):
    """404."""


class ConflictError(ApiError):
    """409: conflicts with the current state (e.g. ``email_taken``)."""


class UnprocessableError(ApiError):
    """422: refused by a rule of the operation (e.g. ``webhook_target_forbidden``)."""


class RateLimitedError(ApiError):
    """429 from the server, or raised locally when the client knows a request would be."""


class ServiceUnavailableError(ApiError):
    """503: a dependency cannot serve now; ``retry_after`` says when to try again."""


class ServerError(ApiError):
    """Any other 5xx."""


class TransportError(ClientError):
    """No answer: the connection failed or timed out."""

    def __init__(self, message: str, *, sent: bool) -> None:
        self.sent = sent  # whether the request may have reached the server
        super().__init__(message)


class DeadlineExceededError(ClientError):
    """The call's total deadline passed (or a retry would have started after it)."""

    def __init__(self, message: str, *, last_error: ClientError | None = None) -> None:
        self.last_error = last_error
        super().__init__(message)


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableError,
    429: RateLimitedError,
    503: ServiceUnavailableError,
}


def error_for(status: int, problem: dict[str, Any], retry_after: float | None) -> ApiError:
    """The typed error of a problem answer."""
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    code = str(problem.get("code") or "unknown")
    detail = str(problem.get("detail") or problem.get("title") or "")
    return cls(status, code, detail, problem, retry_after=retry_after)
