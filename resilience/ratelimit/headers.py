"""``RateLimit-Policy`` and ``RateLimit`` fields in the current IETF draft syntax.

draft-ietf-httpapi-ratelimit-headers (REFERENCE.md) defines both as Structured Field
Lists of items whose value is the policy name (a String) with parameters::

    RateLimit-Policy: "login-ip";q=20;w=900, "login-username";q=5;w=900
    RateLimit: "login-ip";r=19;t=44, "login-username";r=4;t=179

``q`` is the bucket capacity and ``w`` the seconds an empty bucket takes to refill, so
``q/w`` is the sustained rate. ``r`` is the whole tokens left and ``t`` the effective
window: the seconds within which the client can use no more than ``r``, which for a token
bucket is the time until the next token (rounded down, so it is never an overstatement).
``Retry-After`` is rounded up from the same figures, so it never points earlier than
``t``, as the draft asks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

POLICY_HEADER = "RateLimit-Policy"
LIMIT_HEADER = "RateLimit"


@dataclass(frozen=True)
class ServiceLimit:
    """What one enforced policy tells the client about this request."""

    name: str
    quota: int
    window_s: int
    remaining: int
    next_token_s: float


@functools.lru_cache(maxsize=256)
def _sf_string(value: str) -> str:
    # Structured Field String: printable ASCII, with backslash and quote escaped. Policy
    # names are few and fixed, so the answer is cached (this runs on every response).
    cleaned = "".join(ch for ch in value if 0x20 <= ord(ch) <= 0x7E)
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def retry_after_seconds(seconds: float) -> int:
    """Whole seconds for ``Retry-After``: rounded up, at least 1 (never "retry now")."""
    return max(1, math.ceil(seconds - 1e-9))


def render(limits: Iterable[ServiceLimit]) -> dict[str, str]:
    """Both header fields for ``limits`` (one item per policy, the latest figures win)."""
    seen: dict[str, ServiceLimit] = {}
    for limit in limits:
        seen[limit.name] = limit
    if not seen:
        return {}
    policy = ", ".join(
        f"{_sf_string(item.name)};q={item.quota};w={item.window_s}" for item in seen.values()
    )
    current = ", ".join(
        f"{_sf_string(item.name)};r={max(0, item.remaining)}"
        f";t={max(0, math.floor(item.next_token_s))}"
        for item in seen.values()
    )
    return {POLICY_HEADER: policy, LIMIT_HEADER: current}
