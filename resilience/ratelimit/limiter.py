"""The limiter: policies + identities -> one decision, in Redis or, failing that, locally.

A :class:`Limiter` takes every bucket of one decision in one Redis round trip (or, with
Redis unavailable, from per-process buckets) and answers a :class:`Decision`; a
request's policies and identities are found by :mod:`resilience.ratelimit.decisions`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from resilience.ratelimit import metrics
from resilience.ratelimit.config import Policy, RateLimitConfig, RedisOptions, get_config
from resilience.ratelimit.headers import ServiceLimit, retry_after_seconds
from resilience.ratelimit.storage import (
    Bucket,
    BucketState,
    LocalBucketStore,
    RedisBucketStore,
    StoreUnavailableError,
    build_client,
)

logger = logging.getLogger(__name__)

MODE_REDIS = "redis"
MODE_FALLBACK = "fallback"
MODE_UNAVAILABLE = "unavailable"
MODE_DISABLED = "disabled"


def _buckets(
    keys: Sequence[str], policies: Sequence[Policy], cost: int, *, live: bool
) -> list[Bucket]:
    """One bucket per policy; ``live=False`` (dry-run candidates) never enforces."""
    return [
        Bucket(
            key=key,
            capacity=policy.capacity,
            interval_s=policy.interval_s,
            cost=cost,
            enforce=live and not policy.dry_run,
        )
        for key, policy in zip(keys, policies, strict=True)
    ]


@dataclass(frozen=True)
class PolicyResult:
    """One policy's bucket answer within a decision."""

    policy: Policy
    key: str
    state: BucketState

    @property
    def limited(self) -> bool:
        """This bucket alone had no room (dry-run policies included)."""
        return not self.state.ok

    def service_limit(self) -> ServiceLimit:
        """The figures the ``RateLimit`` fields advertise for this policy."""
        return ServiceLimit(
            name=self.policy.name,
            quota=self.policy.capacity,
            window_s=self.policy.window_s,
            remaining=self.state.remaining,
            next_token_s=self.state.next_token_s,
        )


@dataclass(frozen=True)
class Decision:
    """The verdict for one request over one or more policies."""

    allowed: bool
    mode: str
    results: tuple[PolicyResult, ...] = ()
    unavailable: tuple[str, ...] = ()  # fail-closed policies that could not be checked
    unavailable_retry_after: int = 1

    @property
    def violated(self) -> list[str]:
        """Names of the enforced policies that refused this request."""
        return [r.policy.name for r in self.results if r.limited and not r.policy.dry_run]

    @property
    def retry_after(self) -> int:
        """Whole seconds until every violated bucket has room (rounded up, at least 1)."""
        if self.unavailable:
            return self.unavailable_retry_after
        waits = [r.state.retry_after_s for r in self.results if r.limited and not r.policy.dry_run]
        return retry_after_seconds(max(waits, default=0.0))

    def service_limits(self) -> list[ServiceLimit]:
        """Limits worth advertising: enforced policies only (a dry run is invisible)."""
        return [r.service_limit() for r in self.results if not r.policy.dry_run]


def _hash(value: str) -> str:
    # Submitted usernames are personal data and attacker-chosen: never raw in Redis keys.
    # JSON may carry a lone surrogate ("\ud800"): hash it as is, never fail on it.
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class Limiter:
    """Decides over several buckets at once; Redis first, per-process buckets as fallback.

    ``clock`` (seconds) replaces Redis' clock and the monotonic clock of the fallback;
    tests inject one so they never sleep. The Redis client and pool are shared per
    process and per Redis configuration.
    """

    def __init__(self, *, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock
        self._stores: dict[RedisOptions, RedisBucketStore] = {}
        self._local: LocalBucketStore | None = None
        self._lock = threading.Lock()
        self._last_mode = MODE_REDIS

    def redis_store(self, config: RateLimitConfig | None = None) -> RedisBucketStore:
        """The Redis store for the current configuration (built once per Redis setup)."""
        options = (config or get_config()).redis
        store = self._stores.get(options)
        if store is None:
            with self._lock:
                store = self._stores.get(options)
                if store is None:
                    store = RedisBucketStore(shared_client(options), clock=self._clock)
                    self._stores[options] = store
        return store

    def local_store(self, config: RateLimitConfig | None = None) -> LocalBucketStore:
        """This process's fallback buckets."""
        if self._local is None:
            with self._lock:
                if self._local is None:
                    max_keys = (config or get_config()).fallback_max_keys
                    if self._clock is None:
                        self._local = LocalBucketStore(max_keys=max_keys)
                    else:
                        self._local = LocalBucketStore(max_keys=max_keys, clock=self._clock)
        return self._local

    @staticmethod
    def key(config: RateLimitConfig, policy: Policy, identity: str) -> str:
        """The Redis key of ``policy``'s bucket for ``identity``, hash-tagged for a cluster.

        One decision runs one script over all its buckets, so on Redis Cluster they must
        share a slot. Policies decided together (login: per IP and per username) name
        one ``slot`` and their keys carry it as the hash tag, ``rl:{login}:login_ip:...``;
        a policy decided alone is tagged by its identity, ``rl:flood:{203.0.113.9}``, so
        its buckets spread over the masters. A bucket's key never depends on which other
        buckets it is decided with, so the limiter counts exactly as on one Redis.
        """
        if policy.scope == "username":
            identity = _hash(identity)
        if policy.slot:
            return f"{config.key_prefix}:{{{policy.slot}}}:{policy.name}:{identity}"
        return f"{config.key_prefix}:{policy.name}:{{{identity}}}"

    def check(self, checks: Sequence[tuple[Policy, str]], *, cost: int = 1) -> Decision:
        """One decision for ``(policy, identity)`` pairs; consumes only if all allow."""
        config = get_config()
        if not config.enabled or not checks:
            return Decision(allowed=True, mode=MODE_DISABLED)
        candidates = [
            (config.candidates[policy.name], identity)
            for policy, identity in checks
            if policy.name in config.candidates
        ]
        if candidates:
            self._check_candidates(config, candidates, cost)
        keys = [self.key(config, policy, identity) for policy, identity in checks]
        policies = [policy for policy, _ in checks]
        buckets = _buckets(keys, policies, cost, live=True)
        try:
            allowed, states = self.redis_store(config).consume(buckets)
            mode = MODE_REDIS
        except StoreUnavailableError as exc:
            closed = [p.name for p in policies if p.fail == "closed" and not p.dry_run]
            if closed:
                decision = Decision(
                    allowed=False,
                    mode=MODE_UNAVAILABLE,
                    unavailable=tuple(closed),
                    unavailable_retry_after=config.unavailable_retry_after_s,
                )
                self._note_mode(MODE_FALLBACK, str(exc))
                self._count(decision)
                return decision
            allowed, states = self.local_store(config).consume(
                [self._local_share(bucket, config.instances) for bucket in buckets]
            )
            mode = MODE_FALLBACK
            self._note_mode(mode, str(exc))
        else:
            self._note_mode(mode, "")
        decision = Decision(
            allowed=allowed,
            mode=mode,
            results=tuple(
                PolicyResult(policy=p, key=k, state=s)
                for p, k, s in zip(policies, keys, states, strict=True)
            ),
        )
        self._count(decision)
        return decision

    def _check_candidates(
        self, config: RateLimitConfig, checks: Sequence[tuple[Policy, str]], cost: int
    ) -> None:
        """Decide each candidate on its own buckets, as if it were the live policy.

        A separate call with dry-run buckets only: each consumes when it has room,
        whatever the live policies decide, so a candidate sees the traffic it would see
        if it were live. Counted and logged, never enforced. Skipped while Redis is
        unavailable (an experiment does not need the per-process fallback).
        """
        keys = [self.key(config, policy, identity) for policy, identity in checks]
        buckets = _buckets(keys, [policy for policy, _ in checks], cost, live=False)
        try:
            _, states = self.redis_store(config).consume(buckets)
        except StoreUnavailableError:
            return
        refused = []
        for (policy, _), key, state in zip(checks, keys, states, strict=True):
            metrics.decision(
                policy.name, "allowed" if state.ok else "dry_run_limited", MODE_REDIS
            ).inc()
            if not state.ok:
                refused.append((policy.name, key))
        if refused:
            logger.info(
                "rate limit candidate would refuse",
                extra={"policies": [n for n, _ in refused], "keys": [k for _, k in refused]},
            )

    @staticmethod
    def _local_share(bucket: Bucket, instances: int) -> Bucket:
        # Each of `instances` processes takes an equal share of capacity and rate, so the
        # fleet stays near the limit when load is balanced. At least one token each:
        # below that a process could never serve the endpoint (adr/0004).
        return Bucket(
            key=bucket.key,
            capacity=max(1.0, bucket.capacity / instances),
            interval_s=bucket.interval_s * instances,
            cost=bucket.cost,
            enforce=bucket.enforce,
        )

    def _note_mode(self, mode: str, error: str) -> None:
        # One log line per transition, not per request: an outage must not flood the logs.
        if mode != self._last_mode:
            self._last_mode = mode
            log = logger.warning if mode == MODE_FALLBACK else logger.info
            log("rate limiter mode changed", extra={"mode": mode, "error": error or None})

    @staticmethod
    def _count(decision: Decision) -> None:
        if decision.mode == MODE_UNAVAILABLE:
            for name in decision.unavailable:
                metrics.decision(name, "unavailable", MODE_FALLBACK).inc()
            logger.info(
                "rate limit unavailable, failing closed",
                extra={"policies": list(decision.unavailable)},
            )
            return
        for result in decision.results:
            if result.limited:
                outcome = "dry_run_limited" if result.policy.dry_run else "limited"
            elif decision.allowed:
                outcome = "allowed"
            else:
                continue  # refused by another policy: counted under that one
            metrics.decision(result.policy.name, outcome, decision.mode).inc()
        limited = [r for r in decision.results if r.limited]
        if limited:
            logger.info(
                "rate limit exceeded",
                extra={
                    "policies": [r.policy.name for r in limited],
                    "dry_run": [r.policy.dry_run for r in limited],
                    "keys": [r.key for r in limited],
                    "mode": decision.mode,
                    "allowed": decision.allowed,
                },
            )

    def reset_local(self) -> None:
        """Forget this process's fallback buckets."""
        if self._local is not None:
            self._local.clear()


# --- Process-wide client and limiter --------------------------------------------------

_clients: dict[RedisOptions, redis.Redis] = {}
_clients_lock = threading.Lock()


def shared_client(options: RedisOptions) -> redis.Redis:
    """One rate-limit Redis client (and pool) per process and Redis configuration."""
    client = _clients.get(options)
    if client is None:
        with _clients_lock:
            client = _clients.setdefault(options, build_client(options))
    return client


_default = Limiter()
_override: Limiter | None = None


def get_limiter() -> Limiter:
    """The limiter requests use (a test may swap in one with a fake clock)."""
    return _override or _default


@contextmanager
def use_limiter(limiter: Limiter) -> Iterator[Limiter]:
    """Make ``limiter`` the one requests use for the duration of the block (tests)."""
    global _override  # noqa: PLW0603 - the one swappable instance, restored on exit
    previous, _override = _override, limiter
    try:
        yield limiter
    finally:
        _override = previous
