"""Retries on tenacity: capped exponential backoff with full jitter, a retry budget,
``Retry-After`` honoured up to a cap, and the request deadline respected.

Why each piece (REFERENCE.md): full jitter keeps many clients from retrying in step; the
budget keeps a dead dependency from receiving ``max_attempts`` times the normal load;
the deadline stops retrying once an answer could no longer arrive in time.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import tenacity

from resilience import deadline, metrics, registry
from resilience.policies import RetryPolicy

logger = logging.getLogger(__name__)
T = TypeVar("T")


class RetryBudget:
    """Retries allowed: ``ratio`` of the calls of the last ``window_s``, plus a floor.

    Per process, counted in one-second buckets (Finagle's RetryBudget, Envoy's retry
    budget). ``clock`` is injectable so tests never sleep.
    """

    def __init__(
        self,
        *,
        ratio: float,
        window_s: float,
        min_retries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ratio = ratio
        self.window_s = window_s
        self.min_retries = min_retries
        self._clock = clock
        self._buckets: collections.deque[list[int]] = (
            collections.deque()
        )  # [second, calls, retries]
        self._lock = threading.Lock()

    def _current(self) -> list[int]:
        second = int(self._clock())
        while self._buckets and self._buckets[0][0] <= second - self.window_s:
            self._buckets.popleft()
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        return self._buckets[-1]

    def record_call(self) -> None:
        """Count one first attempt (it earns ``ratio`` of a retry)."""
        with self._lock:
            self._current()[1] += 1

    def try_spend(self) -> bool:
        """Take one retry if the budget allows; False means do not retry."""
        with self._lock:
            bucket = self._current()
            calls = sum(b[1] for b in self._buckets)
            retries = sum(b[2] for b in self._buckets)
            if retries >= math.floor(self.ratio * calls) + self.min_retries:
                return False
            bucket[2] += 1
            return True


def budget_for(dependency: str, policy: RetryPolicy) -> RetryBudget:
    """The process-wide budget of ``dependency``."""
    return registry.live(
        registry.BUDGET,
        dependency,
        lambda: RetryBudget(
            ratio=policy.budget_ratio,
            window_s=policy.budget_window_s,
            min_retries=policy.budget_min_retries,
        ),
    )


def retry_after_of(exc: BaseException | None) -> float | None:
    """The ``Retry-After`` a failure carried, in seconds, if any."""
    return getattr(exc, "retry_after_s", None)


def full_jitter_wait(policy: RetryPolicy) -> tenacity.wait.wait_base:
    """``uniform(0, min(cap, base * 2**(n-1)))`` for retry ``n`` (Brooker's full jitter)."""
    return tenacity.wait_random_exponential(multiplier=policy.base_s, max=policy.cap_s)


class _WaitRetryAfterOrJitter(tenacity.wait.wait_base):
    """The server's ``Retry-After`` when it sent one, else full jitter."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._jitter = full_jitter_wait(policy)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        server_says = retry_after_of(exc)
        return server_says if server_says is not None else self._jitter(retry_state)


class _StopPolicy(tenacity.stop.stop_base):
    """Stop on attempts, on a Retry-After beyond the cap, on the deadline, on the budget.

    tenacity computes the coming wait before asking stop, so the deadline check knows
    whether the next attempt could still start in time. The budget is consulted last:
    a retry token is spent only when a retry really happens.
    """

    def __init__(self, policy: RetryPolicy, budget: RetryBudget) -> None:
        self.policy = policy
        self.budget = budget
        self.reason: str | None = None

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        left = deadline.remaining()
        server_says = retry_after_of(exc)
        if retry_state.attempt_number >= self.policy.max_attempts:
            self.reason = "attempts"
        elif server_says is not None and server_says > self.policy.retry_after_cap_s:
            self.reason = "retry_after_too_long"
        elif left is not None and retry_state.upcoming_sleep + deadline.MIN_USEFUL_S >= left:
            self.reason = "deadline"
        elif not self.budget.try_spend():
            self.reason = "budget"
        else:
            return False
        return True


def call_with_retry(
    dependency: str,
    policy: RetryPolicy,
    attempt: Callable[[], T],
    *,
    retryable: Callable[[BaseException], bool],
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``attempt`` and retry it per ``policy``; the last exception is re-raised as is."""
    budget = budget_for(dependency, policy)
    budget.record_call()
    stop = _StopPolicy(policy, budget)

    def before_sleep(retry_state: tenacity.RetryCallState) -> None:
        exc = retry_state.outcome.exception()
        metrics.RETRY_RETRIES.labels(dependency, type(exc).__name__).inc()
        logger.info(
            "retrying",
            extra={
                "dependency": dependency,
                "attempt": retry_state.attempt_number,
                "error": type(exc).__name__,
                "sleep_s": round(retry_state.upcoming_sleep, 3),
            },
        )

    retrying = tenacity.Retrying(
        stop=stop,
        wait=_WaitRetryAfterOrJitter(policy),
        retry=tenacity.retry_if_exception(retryable),
        before=lambda _: metrics.RETRY_ATTEMPTS.labels(dependency).inc(),
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
    try:
        return retrying(attempt)
    except BaseException as exc:
        reason = stop.reason or ("not_retryable" if not retryable(exc) else "unknown")
        metrics.RETRY_GAVE_UP.labels(dependency, reason).inc()
        # A failure retrying could not help (a 4xx, an open breaker) is not news.
        log = logger.info if reason == "not_retryable" else logger.warning
        log(
            "retry gave up",
            extra={"dependency": dependency, "reason": reason, "error": type(exc).__name__},
        )
        if reason == "budget":
            metrics.RETRY_BUDGET_EXHAUSTED.labels(dependency).inc()
        if reason == "deadline":
            metrics.DEADLINE_EXCEEDED.labels(dependency).inc()
        raise
