"""Compose the patterns for one call to a named dependency.

Order, outermost first (STYLE 9, adr/0003): deadline (and, on the request path, the
dependency's latency budget) -> bulkhead -> retry -> breaker -> per-attempt timeout.
Retry never retries an open breaker, a full bulkhead or a spent deadline: those mean
"do not call now", and retrying them would only add load.

Request path vs background (adr/0007): a user request spends at most
``timeouts.request_budget_s`` on one call, every attempt and wait included, and the
caller's ``retryable`` is asked with ``on_request_path=True`` so that it can refuse to
retry what would only make the user wait (a read timeout); what does not fit is the
caller's to defer. Background calls get the full per-attempt timeouts.
"""

from __future__ import annotations

import contextvars
import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TypeVar

from django.conf import settings

from resilience import deadline, metrics
from resilience.breakers import breaker
from resilience.bulkhead import bulkhead
from resilience.errors import PolicyRefusal
from resilience.policies import TimeoutPolicy, get_policy
from resilience.retry import call_with_retry

T = TypeVar("T")


def clipped(timeouts: TimeoutPolicy) -> TimeoutPolicy:
    """Per-attempt timeouts shortened to the request's remaining budget."""
    return dataclasses.replace(
        timeouts,
        connect_s=deadline.clip(timeouts.connect_s),
        read_s=None if timeouts.read_s is None else deadline.clip(timeouts.read_s),
    )


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, PolicyRefusal):
        return "refused"
    return "error"


# Seconds spent waiting on dependencies by the current request, when someone is counting
# (the concurrency limiter: latency that a dependency adds is not this process's queue).
_dependency_wait: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar(
    "dependency_wait", default=None
)


def count_dependency_wait() -> tuple[list[float], contextvars.Token]:
    """Start counting the time this context waits on dependencies; ``holder[0]`` grows.

    Give the token back with :func:`stop_counting_dependency_wait`.
    """
    holder = [0.0, 0.0]  # seconds waited, and how deep in waiting_on_dependency we are
    return holder, _dependency_wait.set(holder)


def stop_counting_dependency_wait(token: contextvars.Token) -> None:
    _dependency_wait.reset(token)


@contextmanager
def waiting_on_dependency() -> Iterator[None]:
    """Count the enclosed time as waiting on a dependency (a :func:`call`, a Postgres
    query, commit or checkout). Nested waits count once: a connection opened inside a
    query is the same wait."""
    holder = _dependency_wait.get()
    if holder is None:
        yield
        return
    holder[1] += 1
    started = time.perf_counter()
    try:
        yield
    finally:
        holder[1] -= 1
        if holder[1] == 0:
            holder[0] += time.perf_counter() - started


def call(
    dependency: str,
    attempt: Callable[[TimeoutPolicy], T],
    *,
    retryable: Callable[..., bool] | None = None,
    idempotent: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``attempt(timeouts)`` under every policy configured for ``dependency``."""
    with waiting_on_dependency():
        return _call(dependency, attempt, retryable=retryable, idempotent=idempotent, sleep=sleep)


def _call(
    dependency: str,
    attempt: Callable[[TimeoutPolicy], T],
    *,
    retryable: Callable[..., bool] | None,
    idempotent: bool,
    sleep: Callable[[float], None],
) -> T:
    """The composition of :func:`call`.

    ``retryable(exc, on_request_path=...)`` says which failures are worth another
    attempt; a non-idempotent call (``idempotent=False``) is never retried. With
    ``RESILIENCE_ENABLED=False`` (the chaos baseline) only the per-attempt timeouts remain.
    """
    policy = get_policy(dependency)
    if not settings.RESILIENCE_ENABLED:
        return attempt(policy.timeouts)

    on_request_path = deadline.on_request_path()
    budget = policy.timeouts.request_budget_s if on_request_path else None
    guard = breaker(dependency) if policy.breaker else None
    slots = bulkhead(dependency)

    def one_attempt() -> T:
        deadline.ensure_time_left(dependency)
        timeouts = clipped(policy.timeouts)
        started = time.perf_counter()
        outcome = "ok"
        try:
            return guard.call(attempt, timeouts) if guard else attempt(timeouts)
        except BaseException as exc:
            outcome = _outcome(exc)
            raise
        finally:
            metrics.DEPENDENCY_CALL_SECONDS.labels(dependency, outcome).observe(
                time.perf_counter() - started
            )

    with deadline.deadline(budget) if budget else nullcontext():
        deadline.ensure_time_left(dependency)
        with slots.slot() if slots else nullcontext():
            if policy.retry is None or retryable is None or not idempotent:
                return one_attempt()
            return call_with_retry(
                dependency,
                policy.retry,
                one_attempt,
                retryable=lambda exc: (
                    not isinstance(exc, PolicyRefusal)
                    and retryable(exc, on_request_path=on_request_path)
                ),
                sleep=sleep,
            )
