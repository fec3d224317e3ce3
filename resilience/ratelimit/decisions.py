"""Rate-limit decisions for a request: identities, the recorded decisions, refusals.

:func:`check_request` is what the middleware, the DRF throttles and the admin's login
form call. It finds each policy's identity in the request (IP, user, submitted
username, endpoint or global), asks the process's :class:`~resilience.ratelimit.limiter.
Limiter` for one decision over all of them and remembers it on the request, so the
middleware can write the ``RateLimit`` fields on the way out. :func:`enforce` turns a
refusal into the 429 (or 503) refusal of :mod:`resilience.ratelimit.errors`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from resilience.ratelimit.client_ip import client_ip
from resilience.ratelimit.config import Policy, get_config
from resilience.ratelimit.errors import RateLimitedError, RateLimiterUnavailableError
from resilience.ratelimit.headers import render
from resilience.ratelimit.limiter import MODE_DISABLED, Decision, get_limiter

DECISIONS_ATTRIBUTE = "ratelimit_decisions"


def normalize_username(value: object) -> str:
    """A submitted username as a bucket identity ("" when absent or not a string).

    Normalised like ``accounts.models.normalize_email``, so "Bob@X.com " and "bob@x.com"
    draw from one bucket.
    """
    return value.strip().lower() if isinstance(value, str) else ""


def _username(request: Any, field: str) -> str:
    data = getattr(request, "data", None)  # DRF's parsed body; absent on a Django request
    return normalize_username(data.get(field) if isinstance(data, Mapping) else None)


def identity_for(policy: Policy, request: Any, *, username: str | None = None) -> str:
    """Whose bucket ``request`` draws from under ``policy``.

    ``username`` is the submitted username when the request does not carry it where a
    ``username``-scoped policy looks (a Django form rather than a DRF body).
    """
    if policy.scope == "ip":
        return client_ip(request)
    if policy.scope == "user":
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            return f"user:{user.pk}"
        return f"ip:{client_ip(request)}"  # anonymous callers share their IP's bucket
    if policy.scope == "username":
        return username if username is not None else _username(request, policy.username_field)
    if policy.scope == "endpoint":
        match = getattr(request, "resolver_match", None)
        return match.route if match is not None else request.path
    return "global"


def check_request(
    request: Any, policy_names: Sequence[str], *, cost: int = 1, username: str | None = None
) -> Decision:
    """Decide ``request`` under the named policies and remember it for the headers.

    ``username``: see :func:`identity_for` (the admin's login form passes it, normalised
    with :func:`normalize_username`).
    """
    config = get_config()
    if not config.enabled:
        return Decision(allowed=True, mode=MODE_DISABLED)
    policies = [config.policy(name) for name in policy_names]
    decision = get_limiter().check(
        [(policy, identity_for(policy, request, username=username)) for policy in policies],
        cost=cost,
    )
    http_request = getattr(request, "_request", request)
    recorded = getattr(http_request, DECISIONS_ATTRIBUTE, None)
    if recorded is None:
        recorded = []
        setattr(http_request, DECISIONS_ATTRIBUTE, recorded)
    recorded.append(decision)
    return decision


def response_headers(request: Any) -> dict[str, str]:
    """``RateLimit-Policy`` and ``RateLimit`` for every decision taken on ``request``."""
    http_request = getattr(request, "_request", request)
    decisions = getattr(http_request, DECISIONS_ATTRIBUTE, ())
    return render(limit for decision in decisions for limit in decision.service_limits())


def refusal_error(
    decision: Decision, request: Any = None
) -> RateLimitedError | RateLimiterUnavailableError:
    """The project's error for a refused decision.

    429, carrying the ``RateLimit`` fields of ``request`` when given; or 503 when a
    fail-closed policy could not be checked.
    """
    if decision.unavailable:
        return RateLimiterUnavailableError(
            policies=decision.unavailable, retry_after=decision.retry_after
        )
    headers = response_headers(request) if request is not None else {}
    return RateLimitedError(
        policies=decision.violated, retry_after=decision.retry_after, headers=headers
    )


def enforce(decision: Decision, request: Any = None) -> None:
    """Raise the project's error for a refused decision; return quietly otherwise."""
    if not decision.allowed:
        raise refusal_error(decision, request)
