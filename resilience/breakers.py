"""Circuit breakers with resilience4j's semantics, pybreaker as the state machine.

``breaker("payments").call(func, ...)`` runs ``func`` unless the breaker is open, in
which case it raises :class:`BreakerOpenError` at once, without touching the dependency.

:class:`Breaker` wraps a ``pybreaker.CircuitBreaker`` and uses only its public API
(``open``, ``half_open``, ``close``, ``state``, ``current_state``, listeners and a
``CircuitBreakerStorage`` of ours); it never calls ``CircuitBreaker.call``, which holds
the breaker's lock for the whole protected call. What pybreaker lacks is ours:

* the decision to open, from a sliding window (:mod:`resilience.breaker_windows`;
  ``count``: the last N calls; ``time``: the calls of the last N seconds) once
  ``minimum_calls`` are in it: failure rate or
  slow-call rate (calls slower than ``slow_call_s``, timed here, success or not) at or
  above its threshold. ``consecutive`` keeps pybreaker's classic ``fail_max`` count;
* half-open lets exactly ``half_open_calls`` trial calls through (fleet-wide when the
  state is shared) and their outcome decides closed or open again;
* while open, a background probe (:mod:`resilience.probes`) decides when to close, so
  no user request is the trial. In-band trials are the fallback when the dependency has
  no probe or no probe runner has reported for ``probes.stale_after_s``.

Shared state (``shared: True``) lives in Redis through
:class:`~resilience.breaker_state.SharedStateStorage`, so
every web and worker process learns of an opening at once. That storage is itself
guarded by the process-local ``redis`` breaker and mirrors every write in memory: when
Redis is down, each process carries on with its own last known state (adr/0003, 0008).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pybreaker
import redis
from django.conf import settings

from resilience import metrics, registry, timing
from resilience.breaker_state import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    STATE_VALUES,
    MemoryStorage,
    SharedStateStorage,
    _shared_state_redis,
)
from resilience.breaker_windows import window_for
from resilience.errors import BreakerOpenError
from resilience.policies import BreakerPolicy, get_policy

logger = logging.getLogger(__name__)
T = TypeVar("T")

# --- What counts as a failure ----------------------------------------------------------


def _is_postgres_failure(exc: BaseException) -> bool:
    from resilience.db import is_connection_failure

    return is_connection_failure(exc)


def _is_redis_failure(exc: BaseException) -> bool:
    return isinstance(exc, redis.RedisError)


def _is_http_failure(exc: BaseException) -> bool:
    from resilience.http import is_downstream_failure

    return is_downstream_failure(exc)


FAILURE_PREDICATES: dict[str, Callable[[BaseException], bool]] = {
    "postgres": _is_postgres_failure,
    "redis": _is_redis_failure,
}


# --- The breaker ------------------------------------------------------------------------


class MetricsListener(pybreaker.CircuitBreakerListener):
    """Turn transitions into metrics and one structured log line each."""

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state, new_state) -> None:
        old = old_state.name if old_state else "none"
        metrics.BREAKER_STATE.labels(cb.name).set(STATE_VALUES[new_state.name])
        metrics.BREAKER_TRANSITIONS.labels(cb.name, old, new_state.name).inc()
        log = logger.warning if new_state.name == OPEN else logger.info
        log(
            "breaker state changed",
            extra={"dependency": cb.name, "from_state": old, "to_state": new_state.name},
        )


class _Reactions(pybreaker.CircuitBreakerListener):
    """Every transition, seen here or in another process, starts a new window."""

    def __init__(self, owner: Breaker) -> None:
        self._owner = owner

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state, new_state) -> None:
        self._owner._on_transition(new_state.name)


def _probe_settings() -> dict[str, Any]:
    return settings.RESILIENCE.get("probes", {})


class Breaker:
    """One dependency's breaker: our window and decisions, pybreaker's state machine."""

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        *,
        is_failure: Callable[[BaseException], bool] = lambda exc: isinstance(exc, Exception),
        storage: MemoryStorage | None = None,
        listeners: tuple[pybreaker.CircuitBreakerListener, ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.policy = policy
        self.storage = storage if storage is not None else MemoryStorage()
        self._is_failure = is_failure
        self._lock = threading.Lock()
        self._window = window_for(policy, clock)
        self._machine = pybreaker.CircuitBreaker(
            name=name,
            fail_max=policy.fail_max,
            reset_timeout=policy.reset_timeout_s,
            state_storage=self.storage,
            listeners=[_Reactions(self), *listeners],
            throw_new_error_on_trip=False,
        )
        self._seen = self._machine.state.name
        metrics.BREAKER_STATE.labels(name).set(STATE_VALUES[self._seen])

    # -- what callers and operators see -------------------------------------------------

    @property
    def current_state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (the fleet's, for shared state)."""
        return self._sync()

    @property
    def reset_timeout(self) -> float:
        return self.policy.reset_timeout_s

    @property
    def shared(self) -> bool:
        return self.storage.shared

    @property
    def forced(self) -> bool:
        return self.current_state == OPEN and self.storage.forced

    def add_listener(self, listener: pybreaker.CircuitBreakerListener) -> None:
        self._machine.add_listener(listener)

    def window_rates(self) -> tuple[int, float, float]:
        """Calls in this process's window, and its failure and slow-call rates."""
        with self._lock:
            calls, failed, slow = self._window.totals()
        if not calls:
            return 0, 0.0, 0.0
        return calls, failed / calls, slow / calls

    def open_remaining_s(self) -> float:
        """Seconds until the open period ends (0 when not open)."""
        with self.storage.one_read():
            return self._open_remaining_s()

    def _open_remaining_s(self) -> float:
        if self.current_state != OPEN:
            return 0.0
        if self.storage.forced:
            return self.policy.reset_timeout_s  # what a client is told; an operator ends it
        opened_at = self.storage.opened_at
        if opened_at is None:
            return 0.0
        reopen = opened_at + timedelta(seconds=self.policy.reset_timeout_s)
        return max(0.0, (reopen - datetime.now(UTC)).total_seconds())

    def open(self) -> None:
        """Open now (the window's decision, or a test's)."""
        with self._lock:
            self._machine.open()

    def force_open(self) -> None:
        """Open and stay open until :meth:`close` (an operator's switch)."""
        self.storage.forced = True
        with self._lock:
            self._machine.open()

    def close(self) -> None:
        """Close (an operator's switch, or a probe's verdict); also ends a forced open."""
        self.storage.forced = False
        with self._lock:
            self._machine.close()

    def restart_open_period(self) -> None:
        """A failed probe: stay open for another ``reset_timeout_s``."""
        self.storage.opened_at = datetime.now(UTC)

    # -- the protected call ---------------------------------------------------------------

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``func`` unless the breaker is open; re-raise its own exception unchanged."""
        trial = self._admit()
        started = time.perf_counter()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            elapsed = time.perf_counter() - started
            timing.add(self.name, elapsed)
            self._record(self._is_failure(exc), elapsed, trial)
            raise
        elapsed = time.perf_counter() - started
        timing.add(self.name, elapsed)
        self._record(False, elapsed, trial)
        return result

    def _sync(self) -> str:
        """Read the state through pybreaker, which tells listeners of changes made elsewhere."""
        with self._lock:
            self._seen = self._machine.state.name
            return self._seen

    def _refuse(self, retry_after_s: float) -> BreakerOpenError:
        metrics.BREAKER_NOT_PERMITTED.labels(self.name).inc()
        return BreakerOpenError(self.name, retry_after_s)

    def _probe_owns_recovery(self) -> bool:
        if self.policy.probe is None or not _probe_settings().get("enabled", True):
            return False
        stale_after = _probe_settings().get("stale_after_s", 5.0)
        return time.time() - self.storage.probe_alive_at <= stale_after

    def _episode(self) -> str:
        opened_at = self.storage.opened_at
        return repr(opened_at.timestamp()) if opened_at else "0"

    def _half_open_for_too_long(self) -> bool:
        opened_at = self.storage.opened_at
        limit = timedelta(seconds=3 * self.policy.reset_timeout_s)
        return opened_at is not None and datetime.now(UTC) - opened_at > limit

    def _admit(self) -> str | None:
        """Admit or refuse; return the half-open episode when the call is a trial."""
        cache_s = settings.RESILIENCE.get("breaker_state_cache_s", 0.0)
        if self._seen == CLOSED and self.storage.cached_state(cache_s) == CLOSED:
            return None
        # Not closed (here, or in the shared state): the decision reads several fields of
        # the shared state; one round trip reads them all.
        with self.storage.one_read():
            return self._admit_unless_closed()

    def _admit_unless_closed(self) -> str | None:
        state = self._sync()
        if state == CLOSED:
            return None
        if state == OPEN:
            self._ensure_probe_runner()
            if self.storage.forced:
                raise self._refuse(self.policy.reset_timeout_s)
            remaining = self._open_remaining_s()
            if remaining > 0:
                raise self._refuse(remaining)
            if self._probe_owns_recovery():
                raise self._refuse(min(1.0, self.policy.reset_timeout_s))
            with self._lock:
                if self._machine.state.name == OPEN:
                    self._machine.half_open()
        elif self._half_open_for_too_long():
            # A trial that never answered (its process died) must not hold half-open.
            self.open()
            raise self._refuse(self.policy.reset_timeout_s)
        episode = self._episode()
        if self.storage.take_trial(episode) > self.policy.half_open_calls:
            raise self._refuse(min(1.0, self.policy.reset_timeout_s))
        return episode

    def _record(self, failed: bool, elapsed_s: float, trial: str | None) -> None:
        slow_s = self.policy.slow_call_s
        slow = slow_s is not None and elapsed_s >= slow_s
        if failed:
            metrics.BREAKER_FAILURES.labels(self.name).inc()
        if slow:
            metrics.BREAKER_SLOW_CALLS.labels(self.name).inc()
        if trial is not None:
            self._record_trial(trial, failed, slow)
            return
        with self._lock:
            if self._seen != CLOSED:
                return  # admitted while closed, answered after a transition: too late
            self._window.add(failed, slow)
            calls, failures, slows = self._window.totals()
            if self._trips(calls, failures, slows):
                self._machine.open()
        if calls:
            metrics.BREAKER_FAILURE_RATE.labels(self.name).set(failures / calls)
            metrics.BREAKER_SLOW_CALL_RATE.labels(self.name).set(slows / calls)

    def _trips(self, calls: int, failures: int, slows: int) -> bool:
        policy = self.policy
        if policy.window == "consecutive":
            return failures >= policy.fail_max
        if calls < policy.minimum_calls:
            return False
        return failures / calls >= policy.failure_rate or (
            policy.slow_call_s is not None and slows / calls >= policy.slow_call_rate
        )

    def _record_trial(self, episode: str, failed: bool, slow: bool) -> None:
        policy = self.policy
        done, failures, slows = self.storage.record_trial(episode, failed, slow)
        permitted = policy.half_open_calls
        if policy.window == "consecutive":
            reopen = failures > 0
        else:
            reopen = failures / permitted >= policy.failure_rate or (
                policy.slow_call_s is not None and slows / permitted >= policy.slow_call_rate
            )
        with self._lock:
            if self._machine.state.name != HALF_OPEN:
                return
            if reopen:
                self._machine.open()
            elif done >= permitted:
                self._machine.close()

    def _on_transition(self, new_state: str) -> None:
        # Called by pybreaker under our lock (every transition goes through _machine).
        self._window.clear()
        self._seen = new_state
        metrics.BREAKER_FAILURE_RATE.labels(self.name).set(0)
        metrics.BREAKER_SLOW_CALL_RATE.labels(self.name).set(0)
        if new_state == OPEN:
            self._ensure_probe_runner()

    def _ensure_probe_runner(self) -> None:
        if self.policy.probe is None or not _probe_settings().get("enabled", True):
            return
        from resilience import probes

        probes.ensure_runner()


# --- Registry -------------------------------------------------------------------------


def breaker(dependency: str) -> Breaker:
    """The breaker of ``dependency`` in this process (built on first use from settings)."""
    return registry.live(registry.BREAKER, dependency, lambda: _build(dependency))


def _build(dependency: str) -> Breaker:
    policy = get_policy(dependency).breaker
    if policy is None:
        raise KeyError(f"{dependency} has no breaker policy")
    template = dependency.split(":", 1)[0]
    storage = (
        SharedStateStorage(dependency, _shared_state_redis)
        if policy.shared and dependency != "redis"
        else MemoryStorage()
    )
    return Breaker(
        dependency,
        policy,
        is_failure=FAILURE_PREDICATES.get(template, _is_http_failure),
        storage=storage,
        listeners=(MetricsListener(),),
    )


def known_breakers() -> dict[str, Breaker]:
    """Every breaker built in this process so far, plus one per configured dependency."""
    from resilience.policies import all_policies

    for name, policy in all_policies().items():
        if policy.breaker is not None and not policy.per_target:
            breaker(name)
    return built_breakers()


def built_breakers() -> dict[str, Breaker]:
    """The breakers this process has built (none are created by asking)."""
    return registry.built(registry.BREAKER)
