"""A per-request time budget carried in a contextvar.

The middleware gives every request ``RESILIENCE["request_deadline_s"]``. Outbound
timeouts are clipped to what is left and retries stop when the next attempt could not
finish in time, so a request never outlives its budget because of retries.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from resilience.errors import DeadlineExceededError

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)
# True while a user request is being served (set by the middleware). Calls made on the
# request path spend at most their dependency's latency budget and never retry a read
# timeout; the background (Celery tasks) is where slow work gets its full timeouts.
_request_path: contextvars.ContextVar[bool] = contextvars.ContextVar("request_path", default=False)

# Below this many seconds an attempt cannot do useful work: treat the budget as spent.
MIN_USEFUL_S = 0.005


def remaining() -> float | None:
    """Seconds left in the current budget, or None outside any deadline."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Run the block with at most ``seconds`` of budget (never extends an outer one)."""
    new = time.monotonic() + seconds
    outer = _deadline.get()
    token = _deadline.set(new if outer is None else min(outer, new))
    try:
        yield
    finally:
        _deadline.reset(token)


def on_request_path() -> bool:
    """Whether the current code serves a user request (inside the deadline middleware)."""
    return _request_path.get()


@contextmanager
def request_path(seconds: float) -> Iterator[None]:
    """Serve a user request: the request deadline, and the request-path rules of calls."""
    token = _request_path.set(True)
    try:
        with deadline(seconds):
            yield
    finally:
        _request_path.reset(token)


def clip(timeout: float) -> float:
    """``timeout`` shortened to the budget that is left."""
    left = remaining()
    return timeout if left is None else max(MIN_USEFUL_S, min(timeout, left))


def ensure_time_left(dependency: str) -> None:
    """Raise :class:`DeadlineExceededError` when the budget is already spent."""
    left = remaining()
    if left is not None and left <= MIN_USEFUL_S:
        from resilience import metrics

        metrics.DEADLINE_EXCEEDED.labels(dependency).inc()
        raise DeadlineExceededError(dependency)


class DeadlineMiddleware:
    """Give every request its time budget."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        with request_path(settings.RESILIENCE["request_deadline_s"]):
            return self.get_response(request)
