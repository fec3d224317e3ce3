"""Where a breaker's state lives: process memory, or Redis shared by the fleet.

:class:`MemoryStorage` is pybreaker's storage contract in memory, plus what our
decisions keep (the open episode, half-open trial counts, the probe lock).
:class:`SharedStateStorage` keeps it in one Redis hash per breaker, mirrored in memory
and guarded by the process-local ``redis`` breaker: when Redis is down, each process
carries on with its own last known state (adr/0003, 0008).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pybreaker
import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

from resilience.errors import BreakerOpenError
from resilience.policies import get_policy
from resilience.redis_client import client_from_url

CLOSED, OPEN, HALF_OPEN = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
# A half-open episode's trial counters outlive any sane open period, then expire.
TRIALS_TTL_S = 3600
# What SharedStateStorage._redis answers when Redis cannot (None is "no such field").
UNAVAILABLE = object()
# The probe "lock" of process-local state (and of shared state while Redis is down).
LOCAL_LOCK = "local"


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

    @contextmanager
    def one_read(self) -> Iterator[None]:
        """Reads inside come from one snapshot (nothing to batch in memory)."""
        yield

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
        # Per thread: the hash as one HGETALL read it, while a one_read() block runs.
        self._snapshot = threading.local()

    def _redis(self, method: str, *args: Any) -> Any:
        """The command's answer, or :data:`UNAVAILABLE` when Redis cannot answer."""
        from resilience.breakers import breaker  # the redis breaker guards its own state

        guard = breaker("redis")
        try:
            return guard.call(getattr(self._client_factory(), method), *args)
        except (redis.RedisError, BreakerOpenError):
            return UNAVAILABLE

    @contextmanager
    def one_read(self) -> Iterator[None]:
        """Every field read inside answers from one ``HGETALL`` (Sentry's breaker reads its
        Redis state in one pipeline): deciding on an open breaker reads the state, the
        forced flag, when it opened and whether a probe is alive, one round trip each
        before, six in all for one refused call. Writes inside update the snapshot, so a
        transition made in the block is read back. Nested blocks share the outer read."""
        if getattr(self._snapshot, "fields", None) is not None:
            yield
            return
        self._snapshot.fields = self._redis("hgetall", self._key)
        try:
            yield
        finally:
            self._snapshot.fields = None

    def _field(self, name: str) -> Any:
        """One field of the hash: from the block's snapshot, else its own ``HGET``."""
        fields = getattr(self._snapshot, "fields", None)
        if fields is None:
            return self._redis("hget", self._key, name)
        if fields is UNAVAILABLE:
            return UNAVAILABLE
        return fields.get(name)

    def _set_field(self, name: str, value: str) -> None:
        fields = getattr(self._snapshot, "fields", None)
        if isinstance(fields, dict):
            fields[name] = value
        self._redis("hset", self._key, name, value)

    def _trials_key(self, episode: str) -> str:
        return f"{self._key}:trials:{episode}"

    @property
    def state(self) -> str:
        shared = self._field("state")
        if shared is not UNAVAILABLE:
            # Redis is the truth when it answers: no state there (never opened, or a
            # Redis that restarted empty) is closed.
            self._mirror_state = shared or CLOSED
            self._read_at = time.monotonic()
        return self._mirror_state

    @state.setter
    def state(self, state: str) -> None:
        self._mirror_state = state
        self._set_field("state", state)

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
        shared = self._field("opened_at")
        if shared not in (None, UNAVAILABLE):
            self._mirror_opened_at = datetime.fromtimestamp(float(shared), tz=UTC)
        return self._mirror_opened_at

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        self._mirror_opened_at = value
        self._set_field("opened_at", repr(value.timestamp()))

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
        shared = self._field("forced")
        if shared is not UNAVAILABLE:
            self._forced = shared == "1"
        return self._forced

    @forced.setter
    def forced(self, value: bool) -> None:
        self._forced = value
        self._set_field("forced", "1" if value else "0")

    @property
    def probe_alive_at(self) -> float:
        shared = self._field("probe_alive_at")
        if shared not in (None, UNAVAILABLE):
            self._probe_alive_at = float(shared)
        return self._probe_alive_at

    def mark_probe_alive(self, at: float) -> None:
        self._probe_alive_at = at
        self._set_field("probe_alive_at", repr(at))

    def acquire_probe_lock(self, ttl_s: float) -> str | None:
        """One prober for the fleet: ``SET NX PX`` (Redis down: each process probes)."""
        token = f"{threading.get_ident()}-{time.time_ns()}"
        client = self._client_factory()
        try:
            from resilience.breakers import breaker

            got = breaker("redis").call(
                client.set, f"{self._key}:probe-lock", token, nx=True, px=int(ttl_s * 1000)
            )
        except (redis.RedisError, BreakerOpenError):
            return LOCAL_LOCK
        return token if got else None

    def release_probe_lock(self, token: str) -> None:
        if token != LOCAL_LOCK:
            self._redis("eval", _RELEASE_LOCK, 1, f"{self._key}:probe-lock", token)
