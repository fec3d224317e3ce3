"""Adaptive concurrency limit and priority load shedding for the request path (adr/0010).

Per-client token buckets cannot help when more legitimate clients arrive than the
service can serve at once: every excess request waits in the server's queue until the
whole service is slow for everyone. This middleware counts the requests in flight in
its process and refuses, with a cheap ``503`` problem+json (code ``overloaded``) and a
jittered ``Retry-After``, what exceeds the limit, before authentication or any view
work:

* **The limit adapts** (Envoy's adaptive concurrency gradient controller, in
  ``resilience.concurrency_limits``): per window of completed requests,
  ``limit = limit x clamp(minRTT x (1 + buffer) / sampleRTT, 0.5, 2) + sqrt(limit)``
  within ``min_limit`` and ``max_limit``, where minRTT is measured now and then by
  pinning the limit to a low concurrency for a few requests. While latency stays near
  minRTT the limit grows; when requests queue for the GIL or the CPU it shrinks. The
  RTTs are the process's own part of each request: the time it waited on Postgres or a
  provider is taken out, so a slow dependency, which fewer requests in flight would not
  make faster, does not shrink the limit.
  ``algorithm: "gradient2"`` (Netflix's, against a long-term average) and
  ``mode: "static"`` (the limit fixed) stay for comparison.
* **Priorities** (``critical``, ``normal``, ``best_effort``): each has a guaranteed share
  of the limit. A class under its share is admitted while the process is under its
  limit; above its share it may only use slots that no higher class is owed, so under
  pressure ``best_effort`` is shed first and ``critical`` last. A view declares its
  class with one line: ``@priority("best_effort")``, or per method
  ``@priority("normal", POST="critical")``.
* **Queue time**: a request that already waited longer than its class's budget before
  reaching Django (``X-Request-Start: t=<epoch seconds>`` set by the gateway, or the
  wait in gunicorn's thread queue measured by ``resilience.gunicorn_worker``) is shed at
  once instead of being served late (Facebook's "Fail at Scale" queue budget). The
  budget is CoDel's, as Facebook uses it: while the queue drains now and then (a request
  found it nearly empty within the last ``standing_after_s``) a burst may wait the long
  budget; once the queue stands, only the short one, so the requests served under a
  standing overload are served soon after they arrived, not after waiting the long
  budget in a FIFO queue.

Why our own code: no maintained Python library implements adaptive concurrency for
WSGI (the reference implementations are Java, Go and Envoy's C++).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from resilience import concurrency_limits, metrics, registry
from resilience.calls import count_dependency_wait, stop_counting_dependency_wait
from resilience.errors import OverloadedError
from resilience.problems import error_response

PRIORITIES = ("critical", "normal", "best_effort")  # highest first
SHED_REASONS = ("limit", "priority", "queue_time")
PIN_WAIT_OUTCOMES = ("admitted", "shed")  # of a request that waited on a minRTT pin
QUEUE_START_HEADERS = ("HTTP_X_REQUEST_START", "HTTP_X_QUEUE_START")
V = TypeVar("V")

_queue_wait = threading.local()


def set_queue_wait(seconds: float | None, queue_age: float | None = None) -> None:
    """Record how long the current thread's request waited before it ran, and the age of
    the queue then (the oldest request's wait), as the server's thread queue saw them."""
    _queue_wait.seconds = seconds
    _queue_wait.queue_age = queue_age


def queue_age_s() -> float | None:
    """The age of the server's thread queue when this request left it, if measured."""
    return getattr(_queue_wait, "queue_age", None)


def priority(default: str, **by_method: str) -> Callable[[V], V]:
    """Declare a view's priority class: ``@priority("normal", POST="critical")``."""
    for level in (default, *by_method.values()):
        if level not in PRIORITIES:
            raise ValueError(f"unknown priority {level!r}; one of {PRIORITIES}")
    declared = {"*": default, **{method.upper(): level for method, level in by_method.items()}}

    def mark(view: V) -> V:
        view.resilience_priority = declared  # type: ignore[attr-defined]
        return view

    return mark


def priority_of(view_func: Any, method: str) -> str:
    """The class a request to ``view_func`` belongs to (DRF and Django class views too)."""
    declared = getattr(view_func, "resilience_priority", None)
    for attr in ("cls", "view_class"):  # DRF's as_view() and Django's keep the class here
        if declared is None and hasattr(view_func, attr):
            declared = getattr(getattr(view_func, attr), "resilience_priority", None)
    if declared is None:
        return config().default_priority
    return declared.get(method.upper(), declared["*"])


# --- Configuration ----------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    enabled: bool
    mode: str  # adaptive | static
    algorithm: str  # gradient (Envoy's, against a measured minRTT) | gradient2 (Netflix's)
    initial_limit: int
    min_limit: int
    max_limit: int
    static_limit: int
    tolerance: float
    smoothing: float
    window_s: float
    min_window_samples: int
    long_window_samples: int
    queue_size: float
    rtt_statistic: str  # mean | percentile (then rtt_percentile)
    rtt_percentile: float
    min_rtt_interval_s: float
    min_rtt_jitter: float
    min_rtt_requests: int
    min_rtt_max_s: float
    min_rtt_concurrency: int
    min_rtt_buffer: float
    min_rtt_pin_wait_s: float
    shares: dict[str, float]
    queue_budgets_s: dict[str, float]
    standing_queue_budgets_s: dict[str, float]
    queue_empty_s: float
    standing_after_s: float
    thread_queue: str  # adaptive_lifo | fifo (resilience.request_queue)
    default_priority: str
    exempt_paths: tuple[str, ...]
    retry_after_s: float
    retry_after_jitter_s: float


def config() -> Config:
    """The limiter's configuration, built once per process from settings."""
    return registry.live(registry.CONCURRENCY, "config", _build_config)


def _build_config() -> Config:
    raw = settings.RESILIENCE_CONCURRENCY
    gradient = raw["gradient"]
    min_rtt = raw["min_rtt"]
    classes = raw["priorities"]
    return Config(
        enabled=raw["enabled"] and settings.RESILIENCE_ENABLED,
        mode=raw["mode"],
        algorithm=raw["algorithm"],
        initial_limit=raw["initial_limit"],
        min_limit=raw["min_limit"],
        max_limit=raw["max_limit"],
        static_limit=raw["static_limit"],
        tolerance=gradient["tolerance"],
        smoothing=gradient["smoothing"],
        window_s=gradient["window_s"],
        min_window_samples=gradient["min_window_samples"],
        long_window_samples=gradient["long_window_samples"],
        queue_size=gradient["queue_size"],
        rtt_statistic=gradient["rtt_statistic"],
        rtt_percentile=gradient["rtt_percentile"],
        min_rtt_interval_s=min_rtt["interval_s"],
        min_rtt_jitter=min_rtt["jitter"],
        min_rtt_requests=min_rtt["requests"],
        min_rtt_max_s=min_rtt["max_s"],
        min_rtt_concurrency=min_rtt["concurrency"],
        min_rtt_buffer=min_rtt["buffer"],
        min_rtt_pin_wait_s=min_rtt["pin_wait_s"],
        shares={name: classes[name]["share"] for name in PRIORITIES},
        queue_budgets_s={name: classes[name]["queue_budget_s"] for name in PRIORITIES},
        standing_queue_budgets_s={
            name: classes[name]["standing_queue_budget_s"] for name in PRIORITIES
        },
        queue_empty_s=raw["standing_queue"]["empty_below_s"],
        standing_after_s=raw["standing_queue"]["after_s"],
        thread_queue=raw["standing_queue"]["thread_queue"],
        default_priority=raw["default_priority"],
        exempt_paths=tuple(raw["exempt_paths"]),
        retry_after_s=raw["retry_after_s"],
        retry_after_jitter_s=raw["retry_after_jitter_s"],
    )


# --- Queue time (CoDel) -----------------------------------------------------------------


class QueueWatch:
    """Is the server's queue standing? (CoDel: it has not been nearly empty for a while.)

    Every request's wait is a look at the queue: a wait under ``queue_empty_s`` means it
    found the queue (almost) empty. A burst drains and is allowed the long budget; a queue
    that has not drained for ``standing_after_s`` is a standing overload.
    """

    def __init__(self, cfg: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self._clock = clock
        self.last_empty = clock()

    def budget(self, level: str, waited: float, queue_age: float | None = None) -> float:
        """Note a look at the queue; the queue budget of a ``level`` request now.

        The look is ``queue_age`` (the oldest wait in the thread queue when this request
        left it) when the server measured it, else the request's own wait: with adaptive
        LIFO the newest request waits for nothing while older ones stand behind it.
        """
        now = self._clock()
        if (waited if queue_age is None else queue_age) < self.cfg.queue_empty_s:
            self.last_empty = now  # a float store: atomic, no lock needed
        if now - self.last_empty > self.cfg.standing_after_s:
            return self.cfg.standing_queue_budgets_s[level]
        return self.cfg.queue_budgets_s[level]

    @property
    def standing(self) -> bool:
        return self._clock() - self.last_empty > self.cfg.standing_after_s


# --- Partitions -------------------------------------------------------------------------


@dataclass(frozen=True)
class ShedDecision:
    reason: str  # limit | priority | queue_time
    priority: str


class ConcurrencyLimiter:
    """In-flight requests of one process, by priority class, under one limit."""

    def __init__(self, cfg: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.gradient = concurrency_limits.build(cfg, clock)
        self.queue = QueueWatch(cfg, clock=clock)
        self.in_flight = dict.fromkeys(PRIORITIES, 0)
        self.pin_waiting = 0  # requests waiting for a slot under a minRTT pin
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)

    @property
    def limit(self) -> int:
        if self.cfg.mode == "static":
            return self.cfg.static_limit
        return max(1, math.floor(self.gradient.limit))

    def _guaranteed(self, level: str, limit: int) -> int:
        # Rounded down, never up to one: with max(1, ...) a limit shrunk to 4 owed one slot
        # to each lower class, half the process, and critical was shed to keep them free
        # (bench overload: the adaptive limit served less critical traffic at 3x than a
        # static one). A share of less than one slot is none; that class borrows.
        return math.floor(limit * self.cfg.shares[level])

    def _pinned(self) -> bool:
        return self.cfg.mode == "adaptive" and getattr(self.gradient, "measuring", False)

    def try_acquire(self, level: str) -> ShedDecision | None:
        """Take a slot for a request of class ``level``, or say why not.

        While the limit is pinned low to measure minRTT, a request beyond the pin waits
        up to ``min_rtt_pin_wait_s`` for a slot instead of being shed at once: the pin
        is the limiter's own doing, not overload, and at a healthy load a pinned slot
        frees within one request's time. (Envoy sheds there; every chaos scenario at a
        healthy load then had a few 503s it did not need: adr/0010.)
        """
        with self._lock:
            decision = self._admit(level)
            if decision is None or decision.reason != "limit" or not self._pinned():
                return decision
            deadline = time.monotonic() + self.cfg.min_rtt_pin_wait_s
            self.pin_waiting += 1
            try:
                while decision is not None and decision.reason == "limit" and self._pinned():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._slot_freed.wait(remaining)
                    decision = self._admit(level)
            finally:
                self.pin_waiting -= 1
            admitted, shed = PIN_WAIT_OUTCOMES
            metrics.CONCURRENCY_PIN_WAITS.labels(shed if decision else admitted).inc()
            return decision

    def _admit(self, level: str) -> ShedDecision | None:
        """Under the lock: take a slot for ``level`` now, or say why not."""
        limit = self.limit
        total = sum(self.in_flight.values())
        if total >= limit:
            return ShedDecision("limit", level)
        if self.in_flight[level] >= self._guaranteed(level, limit):
            # Borrowing: leave free the slots higher classes are owed and not using.
            owed = sum(
                max(0, self._guaranteed(higher, limit) - self.in_flight[higher])
                for higher in PRIORITIES[: PRIORITIES.index(level)]
            )
            if limit - total - owed <= 0:
                return ShedDecision("priority", level)
        self.in_flight[level] += 1
        return None

    def release(
        self, level: str, rtt_s: float | None, started_s: float, waited_s: float = 0.0
    ) -> int:
        """Give the slot back; ``rtt_s`` (the process's own part of a served request,
        admitted at ``started_s`` on the limiter's clock) and ``waited_s`` (the rest: its
        dependency waits) feed the adaptive limit. Returns the limit now, read under the
        lock (reading it may end a minRTT measurement whose time is up)."""
        with self._lock:
            self.in_flight[level] -= 1
            if rtt_s is not None and self.cfg.mode == "adaptive":
                self.gradient.sample(rtt_s, started_s, waited_s)
            limit = self.limit
            if self.pin_waiting:
                self._slot_freed.notify_all()  # a slot, or the pin's end: every one looks
            return limit


def limiter() -> ConcurrencyLimiter:
    """This process's limiter (built on first use)."""
    return registry.live(registry.CONCURRENCY, "limiter", lambda: ConcurrencyLimiter(config()))


def reset() -> None:
    """Forget the configuration and the limiter (tests change the settings)."""
    registry.forget(registry.CONCURRENCY)


# --- Queue time -------------------------------------------------------------------------


def queue_wait_s(request: HttpRequest, *, now: float | None = None) -> float | None:
    """How long the request waited before reaching Django, if anyone measured it.

    The gateway's ``X-Request-Start: t=<epoch seconds>`` (nginx ``t=${msec}``) covers
    every queue after the gateway; without it, the wait in gunicorn's thread queue
    (``resilience.gunicorn_worker``). Absurd values (clock skew, a client's own header)
    are ignored rather than trusted.
    """
    for header in QUEUE_START_HEADERS:
        raw = request.META.get(header)
        if raw:
            try:
                started = float(raw.strip().removeprefix("t="))
            except ValueError:
                continue
            if started > 1e11:  # milliseconds or microseconds since the epoch
                started /= 1000 if started < 1e14 else 1_000_000
            waited = (time.time() if now is None else now) - started
            if 0 <= waited < 60:
                return waited
    return getattr(_queue_wait, "seconds", None)


# --- The middleware ---------------------------------------------------------------------


class ConcurrencyLimitMiddleware:
    """Admit, or shed at once, every request by its view's priority class."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = None
        try:
            response = self.get_response(request)
            return response
        finally:
            admitted = getattr(request, "_concurrency_admitted", None)
            if admitted is not None:
                level, started, waited, token = admitted
                stop_counting_dependency_wait(token)
                served = response is not None and response.status_code < 500
                # The limit follows the process's own latency: time spent waiting on
                # Postgres or a provider is not this process's queue, and fewer requests
                # in flight would not shorten it (concurrency_limits). The wait goes along
                # for the dashboard.
                total = time.monotonic() - started
                rtt = max(0.0, total - waited[0])
                state = limiter()
                limit = state.release(level, rtt if served else None, started, total - rtt)
                metrics.CONCURRENCY_IN_FLIGHT.dec()
                _export(state, limit)

    def process_view(self, request: HttpRequest, view_func: Any, *_: Any) -> HttpResponse | None:
        cfg = config()
        if not cfg.enabled or request.path.startswith(cfg.exempt_paths):
            return None
        level = priority_of(view_func, request.method or "GET")
        state = limiter()
        waited, queue_age = queue_wait_s(request), queue_age_s()
        # The pressure is the longer of this request's wait and the queue's age: with
        # adaptive LIFO the newest request has hardly waited while older ones stand
        # behind it, and a lower class is shed by what the queue says (as FIFO would
        # have made it wait), so LIFO changes which request is served, not which class.
        pressure = max((w for w in (waited, queue_age) if w is not None), default=None)
        if pressure is not None and pressure > state.queue.budget(level, pressure, queue_age):
            return shed(request, ShedDecision("queue_time", level))
        refusal = state.try_acquire(level)
        if refusal is not None:
            return shed(request, refusal)
        waited, token = count_dependency_wait()
        request._concurrency_admitted = (level, time.monotonic(), waited, token)  # type: ignore[attr-defined]
        metrics.CONCURRENCY_IN_FLIGHT.inc()
        return None


def _export(state: ConcurrencyLimiter, limit: int) -> None:
    """The limit and the latencies it follows, for the dashboard and the alert."""
    metrics.CONCURRENCY_LIMIT.set(limit)
    if state.gradient.short_rtt is not None:
        metrics.CONCURRENCY_RTT.labels("short").set(state.gradient.short_rtt)
        metrics.CONCURRENCY_RTT.labels("long").set(state.gradient.long_rtt or 0.0)
        metrics.CONCURRENCY_RTT.labels("dependency_wait").set(state.gradient.wait_rtt or 0.0)


def shed(request: HttpRequest, decision: ShedDecision) -> HttpResponse:
    """The documented answer to a shed request: 503 ``overloaded``, jittered Retry-After."""
    cfg = config()
    metrics.CONCURRENCY_SHED.labels(decision.priority, decision.reason).inc()
    # Whole seconds (RFC 9110), spread so shed clients do not all come back together.
    retry_after = math.ceil(cfg.retry_after_s + random.uniform(0, cfg.retry_after_jitter_s))  # noqa: S311
    error = OverloadedError(
        priority=decision.priority, reason=decision.reason, retry_after_s=retry_after
    )
    return error_response(request, error)  # counted above, not logged (ProblemError.logged)
