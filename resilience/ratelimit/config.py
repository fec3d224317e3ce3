"""Typed rate-limit configuration, built once from ``settings.RESILIENCE_RATELIMIT``.

Every number lives in settings (``docs/configuration.md``, section "Rate limiting"). A
misspelt key or an impossible value raises ``ImproperlyConfigured`` here, and the system
check in :mod:`resilience.ratelimit.checks` reports it at start-up.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from resilience import registry

SETTING = "RESILIENCE_RATELIMIT"
SCOPES = frozenset({"ip", "user", "username", "endpoint", "global"})
FAIL_MODES = frozenset({"open", "closed"})

TOP_LEVEL_KEYS = frozenset(
    {
        "enabled",
        "key_prefix",
        "redis",
        "instances",
        "fallback_max_keys",
        "trusted_proxies",
        "ipv6_prefix_length",
        "unavailable_retry_after_s",
        "middleware",
        "policies",
        "candidates",
    }
)
REDIS_KEYS = frozenset(
    {"url", "max_connections", "pool_timeout_s", "socket_timeout_s", "connect_timeout_s"}
)
MIDDLEWARE_KEYS = frozenset({"policy", "path_prefixes"})
# What a candidate may change of its live policy: the numbers, not whose bucket it is.
CANDIDATE_KEYS = frozenset({"capacity", "refill_rate", "description"})
CANDIDATE_SUFFIX = ".candidate"
POLICY_KEYS = frozenset(
    {"capacity", "refill_rate", "scope", "dry_run", "fail", "username_field", "description", "slot"}
)


@dataclass(frozen=True)
class Policy:
    """One token bucket per identity: ``capacity`` tokens, refilled at ``refill_rate``/s.

    ``scope`` says whose bucket a request draws from: the client IP, the authenticated
    user, the submitted username (``username_field`` of the body), the endpoint, or one
    global bucket. ``fail`` says what happens when Redis is unavailable: ``open`` keeps
    limiting with a per-process bucket, ``closed`` refuses with 503 (adr/0004).
    """

    name: str
    capacity: int
    refill_rate: float
    scope: str
    dry_run: bool = False
    fail: str = "open"
    username_field: str = "email"
    description: str = ""
    # Hash tag shared by the policies decided in one call (Redis Cluster: one slot per
    # script); empty: the policy is decided alone and its keys are tagged by identity.
    slot: str = ""

    @property
    def interval_s(self) -> float:
        """Seconds between two tokens (the GCRA emission interval)."""
        return 1.0 / self.refill_rate

    @property
    def window_s(self) -> int:
        """Seconds an empty bucket takes to refill: the ``w`` of ``RateLimit-Policy``."""
        return max(1, math.ceil(self.capacity / self.refill_rate))


@dataclass(frozen=True)
class RedisOptions:
    """The limiter's own Redis pool: small, blocking, bounded in tens of milliseconds."""

    url: str
    max_connections: int
    pool_timeout_s: float
    socket_timeout_s: float
    connect_timeout_s: float


@dataclass(frozen=True)
class RateLimitConfig:
    """Everything the limiter reads from settings."""

    enabled: bool
    key_prefix: str
    redis: RedisOptions
    instances: int
    fallback_max_keys: int
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    ipv6_prefix_length: int
    unavailable_retry_after_s: int
    middleware_policy: str | None
    middleware_path_prefixes: tuple[str, ...]
    policies: Mapping[str, Policy]
    # Live policy name -> its candidate: checked beside it, always in dry run.
    candidates: Mapping[str, Policy] = dataclasses.field(default_factory=dict)

    def policy(self, name: str) -> Policy:
        """The policy (or candidate) called ``name``; an unknown name is a programming error."""
        if name in self.policies:
            return self.policies[name]
        for candidate in self.candidates.values():
            if candidate.name == name:
                return candidate
        raise ImproperlyConfigured(f"{SETTING} has no policy {name!r}")


def _unknown(where: str, raw: Mapping[str, Any], known: frozenset[str]) -> None:
    extra = sorted(set(raw) - known)
    if extra:
        raise ImproperlyConfigured(f"{SETTING}{where}: unknown key(s) {extra}; check the spelling")


def _number(where: str, value: Any, *, minimum: float, integer: bool = False) -> Any:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
        wanted = "an integer" if integer else "a number"
        raise ImproperlyConfigured(f"{SETTING}{where} must be {wanted} >= {minimum}, not {value!r}")
    return value


def build_rate_policy(name: str, raw: Mapping[str, Any]) -> Policy:
    """Validate one policy's settings and build it."""
    where = f"['policies'][{name!r}]"
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(f"{SETTING}{where} must be a dict")
    _unknown(where, raw, POLICY_KEYS)
    for required in ("capacity", "refill_rate", "scope"):
        if required not in raw:
            raise ImproperlyConfigured(f"{SETTING}{where} needs {required!r}")
    if raw["scope"] not in SCOPES:
        raise ImproperlyConfigured(f"{SETTING}{where}['scope'] must be one of {sorted(SCOPES)}")
    fail = raw.get("fail", "open")
    if fail not in FAIL_MODES:
        raise ImproperlyConfigured(f"{SETTING}{where}['fail'] must be one of {sorted(FAIL_MODES)}")
    refill_rate = _number(f"{where}['refill_rate']", raw["refill_rate"], minimum=0)
    if refill_rate == 0:
        raise ImproperlyConfigured(f"{SETTING}{where}['refill_rate'] must be above 0")
    return Policy(
        name=name,
        capacity=_number(f"{where}['capacity']", raw["capacity"], minimum=1, integer=True),
        refill_rate=float(refill_rate),
        scope=raw["scope"],
        dry_run=bool(raw.get("dry_run", False)),
        fail=fail,
        username_field=str(raw.get("username_field", "email")),
        description=str(raw.get("description", "")),
        slot=_slot(where, raw.get("slot", "")),
    )


def _slot(where: str, value: Any) -> str:
    if not isinstance(value, str) or any(c in value for c in "{}"):
        raise ImproperlyConfigured(f"{SETTING}{where}['slot'] must be a string without braces")
    return value


def build_candidate(live: Policy, raw: Mapping[str, Any]) -> Policy:
    """A candidate for ``live``: new numbers, same scope, always in dry run.

    It is decided with every request ``live`` decides, on its own buckets (named
    ``<live>.candidate``), and counted under its own name, so its would-be refusals
    (``result="dry_run_limited"``) can be compared with the live policy's before
    switching. It never refuses and is never advertised in the ``RateLimit`` fields.
    """
    where = f"['candidates'][{live.name!r}]"
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(f"{SETTING}{where} must be a dict")
    _unknown(where, raw, CANDIDATE_KEYS)
    spec = {
        "capacity": raw.get("capacity", live.capacity),
        "refill_rate": raw.get("refill_rate", live.refill_rate),
        "scope": live.scope,
        "fail": "open",
        "username_field": live.username_field,
        "slot": live.slot,  # decided with the live policy's companions: same slot
        "description": raw.get("description", f"candidate for {live.name}"),
        "dry_run": True,
    }
    return build_rate_policy(f"{live.name}{CANDIDATE_SUFFIX}", spec)


def build_config(raw: Mapping[str, Any]) -> RateLimitConfig:
    """Validate the whole ``RESILIENCE_RATELIMIT`` dict and build the typed config."""
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(f"{SETTING} must be a dict")
    _unknown("", raw, TOP_LEVEL_KEYS)
    redis_raw = raw.get("redis", {})
    _unknown("['redis']", redis_raw, REDIS_KEYS)
    middleware_raw = raw.get("middleware", {})
    _unknown("['middleware']", middleware_raw, MIDDLEWARE_KEYS)
    policies = {
        name: build_rate_policy(name, spec) for name, spec in raw.get("policies", {}).items()
    }
    candidates_raw = raw.get("candidates", {})
    if not isinstance(candidates_raw, Mapping):
        raise ImproperlyConfigured(f"{SETTING}['candidates'] must be a dict")
    for name in candidates_raw:
        if name not in policies:
            raise ImproperlyConfigured(f"{SETTING}['candidates'][{name!r}] names no policy")
    candidates = {
        name: build_candidate(policies[name], spec) for name, spec in candidates_raw.items()
    }
    middleware_policy = middleware_raw.get("policy")
    if middleware_policy is not None and middleware_policy not in policies:
        raise ImproperlyConfigured(f"{SETTING}['middleware']['policy'] names no policy")
    try:
        trusted = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in raw.get("trusted_proxies", ())
        )
    except ValueError as exc:
        raise ImproperlyConfigured(f"{SETTING}['trusted_proxies']: {exc}") from exc
    return RateLimitConfig(
        enabled=bool(raw.get("enabled", True)),
        key_prefix=str(raw.get("key_prefix", "rl")),
        redis=RedisOptions(
            url=str(redis_raw.get("url", "redis://127.0.0.1:6379/0")),
            max_connections=_number(
                "['redis']['max_connections']",
                redis_raw.get("max_connections", 16),
                minimum=1,
                integer=True,
            ),
            pool_timeout_s=_number(
                "['redis']['pool_timeout_s']", redis_raw.get("pool_timeout_s", 0.01), minimum=0
            ),
            socket_timeout_s=_number(
                "['redis']['socket_timeout_s']", redis_raw.get("socket_timeout_s", 0.05), minimum=0
            ),
            connect_timeout_s=_number(
                "['redis']['connect_timeout_s']",
                redis_raw.get("connect_timeout_s", 0.05),
                minimum=0,
            ),
        ),
        instances=_number("['instances']", raw.get("instances", 1), minimum=1, integer=True),
        fallback_max_keys=_number(
            "['fallback_max_keys']", raw.get("fallback_max_keys", 10_000), minimum=1, integer=True
        ),
        trusted_proxies=trusted,
        ipv6_prefix_length=_number(
            "['ipv6_prefix_length']", raw.get("ipv6_prefix_length", 64), minimum=1, integer=True
        ),
        unavailable_retry_after_s=_number(
            "['unavailable_retry_after_s']",
            raw.get("unavailable_retry_after_s", 2),
            minimum=1,
            integer=True,
        ),
        middleware_policy=middleware_policy,
        middleware_path_prefixes=tuple(middleware_raw.get("path_prefixes", ("/api/",))),
        policies=policies,
        candidates=candidates,
    )


def get_config() -> RateLimitConfig:
    """The current configuration (rebuilt when a test overrides the setting)."""
    return registry.live(
        registry.RATELIMIT, "config", lambda: build_config(getattr(settings, SETTING, {}))
    )
