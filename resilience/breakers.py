"""Circuit breakers with resilience4j's semantics, pybreaker as the state machine.

``breaker("payments").call(func, ...)`` runs ``func`` unless the breaker is open, in
which case it raises :class:`BreakerOpenError` at once, without touching the dependency.

:class:`Breaker` wraps a ``pybreaker.CircuitBreaker`` and uses only its public API
(``open``, ``half_open``, ``close``, ``state``, ``current_state``, listeners and a
``CircuitBreakerStorage`` of ours); it never calls ``CircuitBreaker.call``, which holds
the breaker's lock for the whole protected call. What pybreaker lacks is ours:

* the decision to open, from a sliding window (``count``: the last N calls; ``time``:
  the calls of the last N seconds) once ``minimum_calls`` are in it: failure rate or
  slow-call rate (calls slower than ``slow_call_s``, timed here, success or not) at or
  above its threshold. ``consecutive`` keeps pybreaker's classic ``fail_max`` count;
* half-open lets exactly ``half_open_calls`` trial calls through (fleet-wide when the
  state is shared) and their outcome decides closed or open again;
* while open, a background probe (:mod:`resilience.probes`) decides when to close, so
  no user request is the trial. In-band trials are the fallback when the dependency has
  no probe or no probe runner has reported for ``probes.stale_after_s``.

Shared state (``shared: True``) lives in Redis through :class:`SharedStateStorage`, so
every web and worker process learns of an opening at once. That storage is itself
guarded by the process-local ``redis`` breaker and mirrors every write in memory: when
Redis is down, each process carries on with its own last known state (adr/0003, 0008).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pybreaker
import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

from resilience import metrics
from resilience.policies import BreakerPolicy, get_policy
from resilience.redis_client import client_from_url

logger = logging.getLogger(__name__)
T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
# A half-open episode's trial counters outlive any sane open period, then expire.
TRIALS_TTL_S = 3600
# What SharedStateStorage._redis answers when Redis cannot (None is "no such field").
UNAVAILABLE = object()
# The probe "lock" of process-local state (and of shared state while Redis is down).
LOCAL_LOCK = "local"


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


# --- Sliding windows (per process, as in resilience4j) -----------------------------------


class CountWindow:
    """The outcomes of the last ``size`` calls."""

    def __init__(self, size: int) -> None:
        self._calls: deque[tuple[bool, bool]] = deque(maxlen=size)

    def add(self, failed: bool, slow: bool) -> None:
        self._calls.append((failed, slow))

    def totals(self) -> tuple[int, int, int]:
        failed = sum(1 for f, _ in self._calls if f)
        slow = sum(1 for _, s in self._calls if s)
        return len(self._calls), failed, slow

    def clear(self) -> None:
        self._calls.clear()


class TimeWindow:
    """The outcomes of the calls of the last ``size_s`` seconds, in one-second buckets."""

    def __init__(self, size_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._size_s = size_s
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [second, calls, failed, slow]

    def _evict(self, now_s: int) -> None:
        while self._buckets and self._buckets[0][0] <= now_s - self._size_s:
            self._buckets.popleft()

    def add(self, failed: bool, slow: bool) -> None:
        now_s = int(self._clock())
        self._evict(now_s)
        if not self._buckets or self._buckets[-1][0] != now_s:
            self._buckets.append([now_s, 0, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += failed
        bucket[3] += slow

    def totals(self) -> tuple[int, int, int]:
        self._evict(int(self._clock()))
        calls = sum(b[1] for b in self._buckets)
        return calls, sum(b[2] for b in self._buckets), sum(b[3] for b in self._buckets)

    def clear(self) -> None:
        self._buckets.clear()


class ConsecutiveWindow:
    """pybreaker's classic rule: ``fail_max`` failures in a row (slowness not counted)."""

    def __init__(self) -> None:
        self._failures = 0

    def add(self, failed: bool, slow: bool) -> None:
        self._failures = self._failures + 1 if failed else 0

    def totals(self) -> tuple[int, int, int]:
        return self._failures, self._failures, 0

    def clear(self) -> None:
        self._failures = 0


def _window(policy: BreakerPolicy, clock: Callable[[], float]) -> Any:
    if policy.window == "count":
        return CountWindow(policy.window_size)
    if policy.window == "time":
        return TimeWindow(policy.window_size, clock)
    return ConsecutiveWindow()


# --- State storage ---------------------------------------------------------------------


class MemoryStorage(pybreaker.CircuitBreakerStorage):
    """pybreaker's storage contract in process memory, plus what our decisions keep.

    ``episode`` names one open period (its ``opened_at``): half-open trial counters are
    per episode, so two processes entering half-open never reset each other's counts.
    """

    shared = False

    def __init__(self, state: str = CLOSED, name: str = "memory") -> None:
        super().__init__(name)
        self._guard = threading.Lock()
        self._mirror_state = state
        self._mirror_opened_at: datetime | None = None
        self._failures = 0
        self._successes = 0
        self._trials: dict[str, list[int]] = {}  # episode -> [taken, done, failed, slow]
        self._forced = False
        self._probe_alive_at = 0.0

    @property
    def state(self) -> str:
        return self._mirror_state

    @state.setter
    def state(self, state: str) -> None:
        self._mirror_state = state

    @property
    def opened_at(self) -> datetime | None:
        return self._mirror_opened_at

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        self._mirror_opened_at = value

    # pybreaker's counters: kept for its contract; our window, not them, decides.
    def increment_counter(self) -> None:
        self._failures += 1

    def reset_counter(self) -> None:
        self._failures = 0

    def increment_success_counter(self) -> None:
        self._successes += 1

    def reset_success_counter(self) -> None:
        self._successes = 0

    @property
    def counter(self) -> int:
        return self._failures

    @property
    def success_counter(self) -> int:
        return self._successes

    def cached_state(self, max_age_s: float) -> str:
        return self.state

    def take_trial(self, episode: str) -> int:
        with self._guard:
            counts = self._trials.setdefault(episode, [0, 0, 0, 0])
            counts[0] += 1
            return counts[0]

    def record_trial(self, episode: str, failed: bool, slow: bool) -> tuple[int, int, int]:
        with self._guard:
            counts = self._trials.setdefault(episode, [0, 0, 0, 0])
            counts[1] += 1
            counts[2] += failed
            counts[3] += slow
            if len(self._trials) > 8:  # old episodes are never read again
                for old in list(self._trials)[:-8]:
                    del self._trials[old]
            return counts[1], counts[2], counts[3]

    @property
    def forced(self) -> bool:
        return self._forced

    @forced.setter
    def forced(self, value: bool) -> None:
        self._forced = value

    @property
    def probe_alive_at(self) -> float:
        return self._probe_alive_at

    def mark_probe_alive(self, at: float) -> None:
        self._probe_alive_at = at

    def acquire_probe_lock(self, ttl_s: float) -> str | None:
        return LOCAL_LOCK  # one runner per process: nobody else probes this state

    def release_probe_lock(self, token: str) -> None:
        return None


_state_client: redis.Redis | None = None
_state_client_lock = threading.Lock()


def _shared_state_redis() -> redis.Redis:
    """A small client of its own, bounded in tens of milliseconds, no client retry."""
    global _state_client  # noqa: PLW0603 - one lazily built client per process
    with _state_client_lock:
        if _state_client is None:
            timeouts = get_policy("redis").timeouts
            _state_client = client_from_url(  # one server or a Redis Cluster
                settings.RESILIENCE["breaker_state_redis_url"],
                socket_connect_timeout=timeouts.connect_s,
                socket_timeout=timeouts.read_s,
                retry=Retry(NoBackoff(), retries=0),
                max_connections=16,
                decode_responses=True,
            )
        return _state_client


_RELEASE_LOCK = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"
)


class SharedStateStorage(MemoryStorage):
    """Breaker state in Redis (one hash per breaker), mirrored in process memory.

    Reads come from Redis when it answers and from the mirror when it does not; writes
    go to both. Each Redis call passes through the process-local ``redis`` breaker, so a
    dead Redis costs one short timeout per process, then nothing. pybreaker's failure
    and success counters stay local: our window, not pybreaker's counter, decides.
    """

    shared = True

    def __init__(self, name: str, client_factory: Callable[[], redis.Redis]) -> None:
        super().__init__(CLOSED, name)
        self._key = f"resilience:breaker:{name}"
        self._client_factory = client_factory
        self._read_at = 0.0

    def _redis(self, method: str, *args: Any) -> Any:
        """The command's answer, or :data:`UNAVAILABLE` when Redis cannot answer."""
        guard = breaker("redis")
        try:
            return guard.call(getattr(self._client_factory(), method), *args)
        except (redis.RedisError, BreakerOpenError):
            return UNAVAILABLE

    def _trials_key(self, episode: str) -> str:
        return f"{self._key}:trials:{episode}"

    @property
    def state(self) -> str:
        shared = self._redis("hget", self._key, "state")
        if shared is not UNAVAILABLE:
            # Redis is the truth when it answers: no state there (never opened, or a
            # Redis that restarted empty) is closed.
            self._mirror_state = shared or CLOSED
            self._read_at = time.monotonic()
        return self._mirror_state

    @state.setter
    def state(self, state: str) -> None:
        self._mirror_state = state
        self._redis("hset", self._key, "state", state)

    def shared_state(self) -> str | None:
        """The state Redis holds now (closed if never written); None when it cannot answer."""
        stored = self._redis("hgetall", self._key)
        if stored is UNAVAILABLE:
            return None
        return stored.get("state", CLOSED)

    def cached_state(self, max_age_s: float) -> str:
        """The state, read from Redis at most every ``max_age_s`` (the hot path)."""
        if time.monotonic() - self._read_at < max_age_s:
            return self._mirror_state
        return self.state

    @property
    def opened_at(self) -> datetime | None:
        shared = self._redis("hget", self._key, "opened_at")
        if shared not in (None, UNAVAILABLE):
            self._mirror_opened_at = datetime.fromtimestamp(float(shared), tz=UTC)
        return self._mirror_opened_at

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        self._mirror_opened_at = value
        self._redis("hset", self._key, "opened_at", repr(value.timestamp()))

    def take_trial(self, episode: str) -> int:
        key = self._trials_key(episode)
        taken = self._redis("hincrby", key, "taken", 1)
        if taken is UNAVAILABLE:
            return super().take_trial(episode)
        self._redis("expire", key, TRIALS_TTL_S)
        return int(taken)

    def record_trial(self, episode: str, failed: bool, slow: bool) -> tuple[int, int, int]:
        key = self._trials_key(episode)
        done = self._redis("hincrby", key, "done", 1)
        if done is UNAVAILABLE:
            return super().record_trial(episode, failed, slow)
        failures = self._redis("hincrby", key, "failed", int(failed))
        slows = self._redis("hincrby", key, "slow", int(slow))
        failures = 0 if failures is UNAVAILABLE else int(failures)
        slows = 0 if slows is UNAVAILABLE else int(slows)
        return int(done), failures, slows

    @property
    def forced(self) -> bool:
        shared = self._redis("hget", self._key, "forced")
        if shared is not UNAVAILABLE:
            self._forced = shared == "1"
        return self._forced

    @forced.setter
    def forced(self, value: bool) -> None:
        self._forced = value
        self._redis("hset", self._key, "forced", "1" if value else "0")

    @property
    def probe_alive_at(self) -> float:
        shared = self._redis("hget", self._key, "probe_alive_at")
        if shared not in (None, UNAVAILABLE):
            self._probe_alive_at = float(shared)
        return self._probe_alive_at

    def mark_probe_alive(self, at: float) -> None:
        self._probe_alive_at = at
        self._redis("hset", self._key, "probe_alive_at", repr(at))

    def acquire_probe_lock(self, ttl_s: float) -> str | None:
        """One prober for the fleet: ``SET NX PX`` (Redis down: each process probes)."""
        token = f"{threading.get_ident()}-{time.time_ns()}"
        client = self._client_factory()
        try:
            got = breaker("redis").call(
                client.set, f"{self._key}:probe-lock", token, nx=True, px=int(ttl_s * 1000)
            )
        except (redis.RedisError, BreakerOpenError):
            return LOCAL_LOCK
        return token if got else None

    def release_probe_lock(self, token: str) -> None:
        if token != LOCAL_LOCK:
            self._redis("eval", _RELEASE_LOCK, 1, f"{self._key}:probe-lock", token)


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
        self._window = _window(policy, clock)
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
            self._record(self._is_failure(exc), time.perf_counter() - started, trial)
            raise
        self._record(False, time.perf_counter() - started, trial)
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
        if self.storage.cached_state(cache_s) == CLOSED and self._seen == CLOSED:
            return None
        state = self._sync()
        if state == CLOSED:
            return None
        if state == OPEN:
            self._ensure_probe_runner()
            if self.storage.forced:
                raise self._refuse(self.policy.reset_timeout_s)
            remaining = self.open_remaining_s()
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
    storage = (
        SharedStateStorage(dependency, _shared_state_redis)
        if policy.shared and dependency != "redis"
        else MemoryStorage()
    )
    candidate = Breaker(
        dependency,
        policy,
        is_failure=FAILURE_PREDICATES.get(template, _is_http_failure),
        storage=storage,
        listeners=(MetricsListener(),),
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


def built_breakers() -> dict[str, Breaker]:
    """The breakers this process has built (none are created by asking)."""
    return dict(_registry)


def reset_registry() -> None:
    """Forget every breaker of this process (tests; shared state in Redis stays)."""
    with _registry_lock:
        _registry.clear()
