"""Circuit breakers on pybreaker: a registry with one breaker per dependency.

``breaker("payments").call(func, ...)`` runs ``func`` unless the breaker is open, in
which case it raises :class:`BreakerOpenError` at once, without touching the dependency.

Two things differ from plain pybreaker, both on purpose:

* pybreaker 1.4's ``CircuitBreaker.call`` holds the breaker's lock for the whole
  protected call, which serialises every caller in a threaded worker. :class:`Breaker`
  takes the lock only to decide and to record, never around the call itself.
* When half-open, pybreaker lets every caller through; :class:`Breaker` lets exactly one
  trial call through per process and refuses the rest until the trial has answered.

Shared state (``shared: True``) lives in Redis through :class:`SharedStateStorage`, so
every web and worker process learns of an opening at once. That storage is itself
guarded by the process-local ``redis`` breaker and mirrors every write in memory: when
Redis is down, each process carries on with its own last known state (adr/0003).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pybreaker
import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

from resilience import metrics
from resilience.policies import get_policy

logger = logging.getLogger(__name__)
T = TypeVar("T")

STATE_VALUES = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_HALF_OPEN: 1, pybreaker.STATE_OPEN: 2}
# "Force open" keeps the breaker open until an operator closes or resets it.
FORCED_OPEN_FOR = timedelta(days=365)


class BreakerOpenError(pybreaker.CircuitBreakerError):
    """The dependency's breaker refused the call; retry after ``retry_after_s`` seconds."""

    def __init__(self, dependency: str, retry_after_s: float) -> None:
        self.dependency = dependency
        self.retry_after_s = max(0.0, retry_after_s)
        super().__init__(f"circuit breaker for {dependency} is open")


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


# --- Shared state ---------------------------------------------------------------------


_state_client: redis.Redis | None = None
_state_client_lock = threading.Lock()


def _shared_state_redis() -> redis.Redis:
    """A small client of its own, bounded in tens of milliseconds, no client retry."""
    global _state_client  # noqa: PLW0603 - one lazily built client per process
    with _state_client_lock:
        if _state_client is None:
            timeouts = get_policy("redis").timeouts
            _state_client = redis.Redis.from_url(
                settings.RESILIENCE["breaker_state_redis_url"],
                socket_connect_timeout=timeouts.connect_s,
                socket_timeout=timeouts.read_s,
                retry=Retry(NoBackoff(), retries=0),
                max_connections=16,
                decode_responses=True,
            )
        return _state_client


class SharedStateStorage(pybreaker.CircuitBreakerStorage):
    """Breaker state in Redis (one hash per breaker), mirrored in process memory.

    Reads come from Redis when it answers and from the mirror when it does not; writes
    go to both. Each Redis call passes through the process-local ``redis`` breaker, so a
    dead Redis costs one short timeout per process, then nothing.
    """

    def __init__(self, name: str, client_factory: Callable[[], redis.Redis]) -> None:
        super().__init__(name)
        self._key = f"resilience:breaker:{name}"
        self._client_factory = client_factory
        self._local = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)

    def _redis(self, method: str, *args: Any) -> Any:
        guard = breaker("redis")
        try:
            return guard.call(getattr(self._client_factory(), method), self._key, *args)
        except (redis.RedisError, BreakerOpenError):
            return None

    @property
    def state(self) -> str:
        shared = self._redis("hget", "state")
        if shared is not None:
            self._local.state = shared
        return self._local.state

    @state.setter
    def state(self, state: str) -> None:
        self._local.state = state
        self._redis("hset", "state", state)

    def increment_counter(self) -> None:
        self._local.increment_counter()
        shared = self._redis("hincrby", "failures", 1)
        if shared is not None:
            self._local._fail_counter = int(shared)

    def reset_counter(self) -> None:
        self._local.reset_counter()
        self._redis("hset", "failures", 0)

    def increment_success_counter(self) -> None:
        self._local.increment_success_counter()
        self._redis("hincrby", "successes", 1)

    def reset_success_counter(self) -> None:
        self._local.reset_success_counter()
        self._redis("hset", "successes", 0)

    @property
    def counter(self) -> int:
        shared = self._redis("hget", "failures")
        return int(shared) if shared is not None else self._local.counter

    @property
    def success_counter(self) -> int:
        shared = self._redis("hget", "successes")
        return int(shared) if shared is not None else self._local.success_counter

    @property
    def opened_at(self) -> datetime | None:
        shared = self._redis("hget", "opened_at")
        if shared is not None:
            return datetime.fromtimestamp(float(shared), tz=UTC)
        return self._local.opened_at

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        self._local.opened_at = value
        self._redis("hset", "opened_at", repr(value.timestamp()))


# --- The breaker ------------------------------------------------------------------------


class MetricsListener(pybreaker.CircuitBreakerListener):
    """Turn transitions and failures into metrics and one structured log line each."""

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state, new_state) -> None:
        old = old_state.name if old_state else "none"
        metrics.BREAKER_STATE.labels(cb.name).set(STATE_VALUES[new_state.name])
        metrics.BREAKER_TRANSITIONS.labels(cb.name, old, new_state.name).inc()
        log = logger.warning if new_state.name == pybreaker.STATE_OPEN else logger.info
        log(
            "breaker state changed",
            extra={"dependency": cb.name, "from_state": old, "to_state": new_state.name},
        )

    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        metrics.BREAKER_FAILURES.labels(cb.name).inc()


class Breaker(pybreaker.CircuitBreaker):
    """A pybreaker breaker that never holds its lock while the protected call runs."""

    def __init__(self, name: str, *, half_open_max_calls: int = 1, **kwargs: Any) -> None:
        super().__init__(name=name, throw_new_error_on_trip=False, **kwargs)
        self._half_open_max_calls = half_open_max_calls
        self._trials_in_flight = 0
        metrics.BREAKER_STATE.labels(name).set(STATE_VALUES[self.current_state])

    def open_remaining_s(self) -> float:
        """Seconds until an open breaker lets a trial call through (0 when not open)."""
        if self.current_state != pybreaker.STATE_OPEN:
            return 0.0
        opened_at = self._state_storage.opened_at
        if opened_at is None:
            return 0.0
        reopen = opened_at + timedelta(seconds=self.reset_timeout)
        return max(0.0, (reopen - datetime.now(UTC)).total_seconds())

    def _refuse(self, retry_after_s: float) -> BreakerOpenError:
        metrics.BREAKER_NOT_PERMITTED.labels(self.name).inc()
        return BreakerOpenError(self.name, retry_after_s)

    def _admit(self) -> bool:
        """Decide under the lock whether a call may go; return whether it is a trial."""
        with self._lock:
            state = self.state.name
            if state == pybreaker.STATE_OPEN:
                remaining = self.open_remaining_s()
                if remaining > 0:
                    raise self._refuse(remaining)
                self.half_open()
                state = pybreaker.STATE_HALF_OPEN
            if state != pybreaker.STATE_HALF_OPEN:
                return False
            if self._trials_in_flight >= self._half_open_max_calls:
                raise self._refuse(min(1.0, self.reset_timeout))
            self._trials_in_flight += 1
            return True

    def _record(self, exc: BaseException | None, *, trial: bool) -> None:
        with self._lock:
            if trial:
                self._trials_in_flight -= 1
            state = self.state
            try:
                if exc is None:
                    state._handle_success()
                else:
                    state._handle_error(exc, reraise=False)
            except BaseException:  # noqa: BLE001, S110 - pybreaker re-raises on trip; we do below
                pass

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``func`` unless the breaker is open; re-raise its own exception unchanged."""
        trial = self._admit()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            self._record(exc, trial=trial)
            raise
        self._record(None, trial=trial)
        return result

    def force_open(self) -> None:
        """Open and stay open until :meth:`close` (an operator's switch)."""
        with self._lock:
            self.open()
            self._state_storage.opened_at = datetime.now(UTC) + FORCED_OPEN_FOR


# --- Registry -------------------------------------------------------------------------

_registry: dict[str, Breaker] = {}
_registry_lock = threading.Lock()


def breaker(dependency: str) -> Breaker:
    """The breaker of ``dependency`` in this process (built on first use from settings)."""
    existing = _registry.get(dependency)
    if existing is not None:
        return existing
    policy = get_policy(dependency).breaker
    if policy is None:
        raise KeyError(f"{dependency} has no breaker policy")
    template = dependency.split(":", 1)[0]
    is_failure = FAILURE_PREDICATES.get(template, _is_http_failure)
    storage = (
        SharedStateStorage(dependency, _shared_state_redis)
        if policy.shared and dependency != "redis"
        else pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
    )
    candidate = Breaker(
        dependency,
        fail_max=policy.fail_max,
        reset_timeout=policy.reset_timeout_s,
        exclude=[lambda exc: not is_failure(exc)],
        listeners=[MetricsListener()],
        state_storage=storage,
    )
    with _registry_lock:
        return _registry.setdefault(dependency, candidate)


def known_breakers() -> dict[str, Breaker]:
    """Every breaker built in this process so far, plus one per configured dependency."""
    from resilience.policies import all_policies

    for name, policy in all_policies().items():
        if policy.breaker is not None and name != "webhook":
            breaker(name)
    return dict(_registry)


def reset_registry() -> None:
    """Forget every breaker of this process (tests; shared state in Redis stays)."""
    with _registry_lock:
        _registry.clear()
