"""Business-rule limits with django-ratelimit (fixed window), answered as 429, not 403.

Token buckets protect capacity; some limits are product rules instead ("10 webhook
pings per user per hour") where a fixed window that resets on the hour is what users
are told. django-ratelimit does that well, but out of the box it raises ``Ratelimited``
(a ``PermissionDenied``, so a 403), sends no ``Retry-After``, and its cache errors can
surface as 500s (GOTCHAS.md). :func:`business_ratelimit` wraps its core instead:

    class WebhookPingApi(APIView):
        @business_ratelimit(group="webhook-ping", key="user", rate="10/h")
        def post(self, request, endpoint_id): ...

A refusal raises :class:`RateLimitedError` (429 problem+json, ``Retry-After`` = the end
of the window, ``RateLimit`` fields); a cache that cannot count raises
:class:`RateLimiterUnavailableError` (503) unless ``fail_open=True``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from django.http import HttpRequest
from django_ratelimit import ALL
from django_ratelimit.core import get_usage
from django_ratelimit.exceptions import Ratelimited

from resilience.problems import error_response
from resilience.ratelimit import metrics
from resilience.ratelimit.config import get_config
from resilience.ratelimit.decisions import DECISIONS_ATTRIBUTE
from resilience.ratelimit.errors import RateLimitedError, RateLimiterUnavailableError
from resilience.ratelimit.headers import ServiceLimit, render, retry_after_seconds

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
MODE = "fixed_window"


def _request_of(args: tuple[Any, ...]) -> Any:
    """The request among a view's arguments: ``(request, ...)`` or ``(self, request, ...)``."""
    for arg in args[:2]:
        if isinstance(arg, HttpRequest) or hasattr(arg, "_request"):
            return arg
    raise TypeError("business_ratelimit decorates views whose first argument is the request")


def _period_seconds(rate: str) -> int:
    from django_ratelimit.core import _split_rate  # the library's own parser, not a copy

    return int(_split_rate(rate)[1])


def business_ratelimit(
    *,
    group: str,
    key: str | Callable[[str, Any], str],
    rate: str,
    method: Any = ALL,
    fail_open: bool = False,
) -> Callable[[F], F]:
    """Limit a view (function or method) to ``rate`` per ``key`` in fixed windows.

    ``key`` and ``rate`` are django-ratelimit's (``"user"``, ``"ip"``, ``"10/h"``...;
    ``"ip"`` resolves through our trusted-proxy rules). ``fail_open`` decides what
    happens when the cache cannot count: serve the request (True) or answer 503.
    """

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            request = _request_of(args)
            try:
                check(request, group=group, key=key, rate=rate, method=method, fail_open=fail_open)
            except (RateLimitedError, RateLimiterUnavailableError) as exc:
                if hasattr(request, "_request"):
                    raise  # a DRF view: the project's exception handler renders it
                return error_response(request, exc)
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


@dataclass(frozen=True)
class FixedWindowDecision:
    """A business rule's verdict, kept on the request for the ``RateLimit`` fields."""

    limit: ServiceLimit
    mode: str = MODE

    def service_limits(self) -> list[ServiceLimit]:
        """The figures the middleware advertises for this rule."""
        return [self.limit]


def _remember(request: Any, limit: ServiceLimit) -> None:
    # The middleware writes RateLimit fields for everything recorded here, on successes.
    http_request = getattr(request, "_request", request)
    recorded = getattr(http_request, DECISIONS_ATTRIBUTE, None)
    if recorded is None:
        recorded = []
        setattr(http_request, DECISIONS_ATTRIBUTE, recorded)
    recorded.append(FixedWindowDecision(limit))


def check(
    request: Any,
    *,
    group: str,
    key: str | Callable[[str, Any], str],
    rate: str,
    method: Any = ALL,
    fail_open: bool = False,
) -> None:
    """Count ``request`` against the fixed window; raise the project's error when over."""
    try:
        usage = get_usage(request, group=group, key=key, rate=rate, method=method, increment=True)
    except redis.RedisError as exc:
        # A plain RedisCache raises; ours (resilience.cache) returns a miss instead, which
        # django-ratelimit reports as the sentinel below. Both mean "could not count".
        logger.warning("business rate limit cannot count", extra={"error": type(exc).__name__})
        usage = {"count": 0, "limit": 0, "should_limit": True, "time_left": -1}
    if usage is None:
        return  # method not limited, or RATELIMIT_ENABLE is off
    if usage["limit"] == 0 and usage["time_left"] == -1:
        # django-ratelimit's "the cache failed" answer (RATELIMIT_FAIL_OPEN is False).
        if fail_open:
            metrics.decision(group, "allowed", MODE).inc()
            return
        metrics.decision(group, "unavailable", MODE).inc()
        raise RateLimiterUnavailableError(
            policies=[group], retry_after=get_config().unavailable_retry_after_s
        )
    period = _period_seconds(rate)
    time_left = max(0, int(usage["time_left"]))
    limit = ServiceLimit(
        name=group,
        quota=int(usage["limit"]),
        window_s=period,
        remaining=max(0, int(usage["limit"]) - int(usage["count"])),
        # In a fixed window nothing returns before the window ends.
        next_token_s=float(time_left),
    )
    headers = render([limit])
    _remember(request, limit)
    if usage["should_limit"]:
        metrics.decision(group, "limited", MODE).inc()
        raise RateLimitedError(
            policies=[group], retry_after=retry_after_seconds(time_left), headers=headers
        )
    metrics.decision(group, "allowed", MODE).inc()


def ratelimited_to_problem(exc: Ratelimited) -> RateLimitedError:
    """Map django-ratelimit's own ``Ratelimited`` (its plain decorator) to our 429.

    The plain decorator does not say when its window ends, so this answer carries no
    ``Retry-After`` rather than a guess that could be too early. Prefer
    :func:`business_ratelimit`, which knows the window.
    """
    return RateLimitedError(policies=[], retry_after=None, detail="Too many requests.")
