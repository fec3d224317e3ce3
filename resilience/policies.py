"""Typed policies per dependency, built once from ``settings.RESILIENCE``.

A call site names a dependency (``"payments"``, ``"webhook:hooks.example.com"``); the
registry hands back the policy, whose parts are small frozen dataclasses with bounded
defaults in the style of resilience4j's ``*Config`` objects. Unknown keys and unsafe
values are rejected by the system check in ``resilience.checks``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from resilience import registry


@dataclass(frozen=True)
class TimeoutPolicy:
    """Per-attempt timeouts in seconds. Missing timeouts are a configuration error."""

    connect_s: float
    read_s: float | None = None
    pool_wait_s: float | None = None
    statement_s: float | None = None
    # On the request path, every attempt and wait of one call fits in this (clipped by
    # the request deadline); what does not fit is deferred to the background, whose
    # calls get one attempt of the full ``read_s``. None: only the deadline bounds it.
    request_budget_s: float | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter, bounded attempts and a budget.

    Defaults follow the AWS and Finagle guidance in REFERENCE.md: three attempts, waits
    drawn from ``[0, min(cap, base * 2**n)]``, retries limited to 20% of recent calls.
    """

    max_attempts: int = 3
    base_s: float = 0.05
    cap_s: float = 1.0
    retry_after_cap_s: float = 2.0
    budget_ratio: float = 0.2
    budget_window_s: float = 10.0
    budget_min_retries: int = 3


@dataclass(frozen=True)
class BreakerPolicy:
    """A breaker with resilience4j's semantics, pybreaker as its state machine.

    ``window`` is ``"count"`` (the last ``window_size`` calls), ``"time"`` (the calls of
    the last ``window_size`` seconds) or ``"consecutive"`` (pybreaker's classic
    ``fail_max`` consecutive failures). With a window, the breaker opens once at least
    ``minimum_calls`` are in it and the failure rate reaches ``failure_rate`` or the
    share of calls slower than ``slow_call_s`` reaches ``slow_call_rate`` (both 0..1).
    After ``reset_timeout_s`` open (resilience4j's wait duration in open state), the
    ``probe`` decides when to close; without one, ``half_open_calls`` user calls are let
    through and their outcome decides. ``probe`` is a kind (``http``, ``postgres``,
    ``redis``) or the dotted path of a callable taking the dependency's policy.
    """

    window: str = "count"
    window_size: int = 20
    minimum_calls: int = 10
    failure_rate: float = 0.5
    slow_call_s: float | None = None  # None: slowness never counts
    slow_call_rate: float = 1.0
    half_open_calls: int = 1
    fail_max: int = 5  # consecutive window only
    reset_timeout_s: float = 30.0
    shared: bool = False  # state in Redis, so every process learns at once
    probe: str | None = None


BULKHEAD_SCOPES = ("process", "fleet")


@dataclass(frozen=True)
class BulkheadPolicy:
    """At most ``max_concurrent`` calls at once; wait at most ``max_wait_s`` for a slot.

    ``scope="process"`` is a semaphore in each process of kind ``runs_in`` (a web process
    and its threads); ``scope="fleet"`` is one count across every process, kept in Redis
    with leases of ``lease_s`` (so a killed process cannot hold a slot for ever). Either
    way it must be smaller than the concurrency of one ``runs_in`` process (the sizing
    check in ``resilience.checks``), or it could never fill and would isolate nothing.
    """

    max_concurrent: int = 10
    max_wait_s: float = 0.0
    scope: str = "process"
    runs_in: str = "web"
    lease_s: float | None = None  # fleet scope: defaults to connect + read timeout + 5 s


@dataclass(frozen=True)
class DependencyPolicy:
    """Everything that governs calls to one dependency."""

    name: str
    timeouts: TimeoutPolicy
    retry: RetryPolicy | None = None  # None: one attempt (retries live elsewhere, or nowhere)
    breaker: BreakerPolicy | None = None
    bulkhead: BulkheadPolicy | None = None
    base_url: str | None = None
    # A template: calls name ``<template>:<target>`` (one breaker per webhook host, say),
    # never the template itself.
    per_target: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


_PARTS = {
    "timeouts": TimeoutPolicy,
    "retry": RetryPolicy,
    "breaker": BreakerPolicy,
    "bulkhead": BulkheadPolicy,
}
_TOP_LEVEL_KEYS = {*_PARTS, "base_url", "per_target"}


class PolicyError(ValueError):
    """A dependency's settings are unknown, missing or unsafe."""


def _build_part(dependency: str, part: str, raw: dict[str, Any]) -> Any:
    cls = _PARTS[part]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise PolicyError(f"{dependency}.{part}: unknown keys {sorted(unknown)}")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise PolicyError(f"{dependency}.{part}: {exc}") from exc


def _validate_bulkhead(name: str, bulkhead: BulkheadPolicy) -> list[tuple[str, float]]:
    """Raise on an unusable bulkhead; return its values that must be positive."""
    if bulkhead.max_concurrent < 1:
        raise PolicyError(f"{name}.bulkhead.max_concurrent must be at least 1")
    if not 0 <= bulkhead.max_wait_s <= 5:
        raise PolicyError(f"{name}.bulkhead.max_wait_s must be within 0..5 s")
    if bulkhead.scope not in BULKHEAD_SCOPES:
        raise PolicyError(f"{name}.bulkhead.scope must be one of {list(BULKHEAD_SCOPES)}")
    return [] if bulkhead.lease_s is None else [("bulkhead.lease_s", bulkhead.lease_s)]


def _validate(policy: DependencyPolicy) -> None:
    name = policy.name
    positive = [("timeouts.connect_s", policy.timeouts.connect_s)]
    for attr in ("read_s", "pool_wait_s", "statement_s", "request_budget_s"):
        value = getattr(policy.timeouts, attr)
        if value is not None:
            positive.append((f"timeouts.{attr}", value))
    if policy.retry:
        retry = policy.retry
        if not 1 <= retry.max_attempts <= 10:
            raise PolicyError(f"{name}.retry.max_attempts must be 1..10 (no unbounded retries)")
        positive += [("retry.base_s", retry.base_s), ("retry.cap_s", retry.cap_s)]
        positive += [("retry.budget_window_s", retry.budget_window_s)]
        if not 0 <= retry.budget_ratio <= 1:
            raise PolicyError(f"{name}.retry.budget_ratio must be within 0..1")
    if policy.breaker:
        _validate_breaker(name, policy.breaker)
        positive += [("breaker.reset_timeout_s", policy.breaker.reset_timeout_s)]
        if policy.breaker.slow_call_s is not None:
            positive += [("breaker.slow_call_s", policy.breaker.slow_call_s)]
    if policy.bulkhead:
        positive += _validate_bulkhead(name, policy.bulkhead)
    for label, value in positive:
        if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
            raise PolicyError(f"{name}.{label} must be a finite number above 0, not {value!r}")


BREAKER_WINDOWS = ("count", "time", "consecutive")


def _validate_breaker(name: str, breaker: BreakerPolicy) -> None:
    if breaker.window not in BREAKER_WINDOWS:
        raise PolicyError(f"{name}.breaker.window must be one of {', '.join(BREAKER_WINDOWS)}")
    counts = ("window_size", "minimum_calls", "half_open_calls", "fail_max")
    for attr in counts:
        value = getattr(breaker, attr)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
            raise PolicyError(f"{name}.breaker.{attr} must be an integer within 1..10000")
    if breaker.window == "count" and breaker.minimum_calls > breaker.window_size:
        raise PolicyError(f"{name}.breaker.minimum_calls cannot exceed a count window_size")
    for attr in ("failure_rate", "slow_call_rate"):
        value = getattr(breaker, attr)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise PolicyError(f"{name}.breaker.{attr} must be within (0, 1]")


def build_dependency_policy(name: str, raw: dict[str, Any]) -> DependencyPolicy:
    """Build and validate one dependency's policy from its settings dictionary."""
    unknown = set(raw) - _TOP_LEVEL_KEYS
    if unknown:
        raise PolicyError(f"{name}: unknown keys {sorted(unknown)}")
    if "timeouts" not in raw:
        raise PolicyError(f"{name}: timeouts are required (every outbound call has one)")
    parts = {part: _build_part(name, part, raw[part]) for part in _PARTS if part in raw}
    policy = DependencyPolicy(
        name=name, base_url=raw.get("base_url"), per_target=bool(raw.get("per_target")), **parts
    )
    _validate(policy)
    return policy


def _configured(template: str) -> DependencyPolicy:
    """The built policy of a configured dependency (KeyError when there is none)."""
    raw = settings.RESILIENCE["dependencies"][template]
    return registry.live(registry.POLICY, template, lambda: build_dependency_policy(template, raw))


def get_policy(dependency: str) -> DependencyPolicy:
    """The policy of ``dependency``; ``webhook:<host>`` uses the ``webhook`` template."""
    template = dependency.split(":", 1)[0]
    policy = _configured(template)
    if template != dependency:
        policy = dataclasses.replace(policy, name=dependency)
    return policy


def all_policies() -> dict[str, DependencyPolicy]:
    """Every configured dependency's policy, by name."""
    return {name: _configured(name) for name in settings.RESILIENCE["dependencies"]}


# Dependencies the library itself calls: the database (resilience.db_backend) and Redis
# (the cache, breaker state, fleet bulkheads).
LIBRARY_DEPENDENCIES = frozenset({"postgres", "redis"})
_declared: set[str] = set(LIBRARY_DEPENDENCIES)


def uses_dependency(name: str) -> str:
    """Declare that the calling module calls ``name``; returns the name, to call it by.

    ``PAYMENTS = uses_dependency("payments")`` at module level: the start-up check
    (``resilience.E004``) then fails when ``RESILIENCE["dependencies"]`` has no such policy.
    """
    _declared.add(name)
    return name


def declared_dependencies() -> frozenset[str]:
    """The library's own dependencies and every one a module declared so far."""
    return frozenset(_declared)
