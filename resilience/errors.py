"""Refusals: every "not now" the service answers, in one hierarchy.

A :class:`Refusal` says that a call, or the whole request, is not served now and when
to try again. It carries the ``dependency`` (or the resource) that refused and a
``retry_after_s``, and it is a :class:`~resilience.problems.ProblemError`, so wherever it
escapes it is rendered the same way: problem+json with a whole-second ``Retry-After``.

Two kinds, because they are handled differently:

* :class:`PolicyRefusal`: one of our own patterns decided not to make the call (breaker
  open, bulkhead full, deadline spent, rate limited, overloaded). Nothing reached the
  dependency, so it is never retried by the retry layer and a background schedule that
  meets one reschedules without spending an attempt.
* :class:`DependencyUnavailableError`: the dependency was called and could not serve
  (no connection, a timeout, a 5xx or 429 answer, a DNS lookup too slow). The retry
  layer may try again within its budget; once it gives up (attempts or retry budget
  spent) this is what the caller sees.

A service that degrades catches :data:`DEGRADE_ON` (every refusal, plus the database
driver's own connection errors, which Django raises as its own types).
"""

from __future__ import annotations

import math

import pybreaker
from django.conf import settings
from django.db import InterfaceError, OperationalError

from resilience.problems import ProblemCode, ProblemError


def whole_seconds(seconds: float) -> int:
    """``Retry-After`` is whole seconds, never 0 (a client must not retry at once)."""
    return max(1, math.ceil(seconds))


class Refusal(ProblemError):
    """Not now: ``dependency`` refused; retry after ``retry_after_s`` seconds.

    ``retry_after_s`` is what the refuser knows (None when it cannot say: the retry
    layer then uses its own jitter); the ``Retry-After`` a client gets falls back to
    ``API_UNAVAILABLE_RETRY_AFTER_S``.
    """

    status = 503
    code = ProblemCode.DEPENDENCY_UNAVAILABLE
    title = "Service temporarily unavailable"
    logged = False  # counted (refusal metrics, status counts), not logged: ProblemError

    def __init__(
        self,
        dependency: str,
        *,
        retry_after_s: float | None = None,
        detail: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        self.dependency = dependency
        self.retry_after_s = None if retry_after_s is None else max(0.0, retry_after_s)
        hint = settings.API_UNAVAILABLE_RETRY_AFTER_S if retry_after_s is None else retry_after_s
        self.retry_after = whole_seconds(hint)
        super().__init__(
            detail or f"{dependency} is unavailable; retry later.",
            headers={"Retry-After": str(self.retry_after), **(headers or {})},
            # A problem names the dependency unless the subclass says what to show.
            extra={"dependency": dependency} if extra is None else extra,
        )


class PolicyRefusal(Refusal):
    """One of our own patterns refused before calling: never retried, spends no attempt."""


class DependencyUnavailableError(Refusal):
    """The dependency was called and could not serve (after any retries)."""


class BreakerOpenError(PolicyRefusal, pybreaker.CircuitBreakerError):
    """The dependency's breaker is open; ``retry_after_s`` is when it may try again."""

    def __init__(self, dependency: str, retry_after_s: float) -> None:
        super().__init__(
            dependency,
            retry_after_s=retry_after_s,
            detail=f"circuit breaker for {dependency} is open; retry later.",
        )


class BulkheadFullError(PolicyRefusal):
    """Every slot of the dependency's bulkhead is taken; the call was not made."""

    def __init__(self, dependency: str) -> None:
        super().__init__(dependency, detail=f"bulkhead for {dependency} is full; retry later.")


class DeadlineExceededError(PolicyRefusal, TimeoutError):
    """The request's time budget is spent; no further dependency calls are started."""

    def __init__(self, dependency: str) -> None:
        super().__init__(dependency, detail=f"request deadline passed before calling {dependency}.")


class OverloadedError(PolicyRefusal):
    """The server sheds this request (resilience.concurrency): too much in flight."""

    code = ProblemCode.OVERLOADED
    title = "Service overloaded"

    def __init__(self, *, priority: str, reason: str, retry_after_s: float) -> None:
        self.priority = priority
        self.reason = reason
        super().__init__(
            "server",
            retry_after_s=retry_after_s,
            detail="The service is at capacity; retry after the delay in Retry-After.",
            extra={"priority": priority, "reason": reason},
        )


class DownstreamHTTPError(DependencyUnavailableError):
    """The dependency answered with a status that means "failed" (5xx or 429)."""

    def __init__(self, dependency: str, response: object, *, retry_after_s: float | None) -> None:
        self.response = response
        # ``status`` is our answer (503); this is the dependency's.
        self.downstream_status = response.status_code
        super().__init__(
            dependency,
            retry_after_s=retry_after_s,
            detail=f"{dependency} answered {self.downstream_status}; retry later.",
        )


# What a service that degrades catches: every refusal, and the database driver's own
# connection errors (Django raises those as its types; the exception handler turns an
# escaped one into a postgres Refusal).
DEGRADE_ON: tuple[type[BaseException], ...] = (Refusal, OperationalError, InterfaceError)


def as_refusal(exc: BaseException) -> Refusal | None:
    """``exc`` as a refusal: itself, a database connection error as ``postgres``, or None."""
    if isinstance(exc, Refusal):
        return exc
    if isinstance(exc, OperationalError | InterfaceError):
        return DependencyUnavailableError("postgres")
    return None
