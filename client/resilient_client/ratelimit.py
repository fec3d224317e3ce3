"""Read the ``RateLimit`` and ``RateLimit-Policy`` fields (draft-ietf-httpapi-ratelimit-headers).

``RateLimit: "flood";r=299;t=0, "orders_create";r=0;t=4`` says, per policy, that ``r``
requests may be sent within ``t`` seconds. A client that has seen ``r=0`` waits instead
of spending a request it knows will be refused.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

_ITEM = re.compile(r'\s*"((?:[^"\\]|\\.)*)"((?:\s*;\s*[a-z*][a-z0-9_.*-]*=[^;,]*)*)\s*(?:,|$)')
_PARAM = re.compile(r";\s*([a-z*][a-z0-9_.*-]*)=([^;,]*)")


def parse_items(value: str) -> dict[str, dict[str, str]]:
    """``"name";k=v;...`` items of a Structured Field list -> {name: {k: v}}; junk skipped."""
    items: dict[str, dict[str, str]] = {}
    for match in _ITEM.finditer(value or ""):
        name = match.group(1).replace('\\"', '"').replace("\\\\", "\\")
        items[name] = {key: raw.strip() for key, raw in _PARAM.findall(match.group(2))}
    return items


def _number(raw: str | None) -> float | None:
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


class RateLimitState:
    """What the server said about each policy, and which policies each operation meets.

    Thread-safe; shared by all calls of one client.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._empty_until: dict[str, float] = {}  # policy -> when it has room again
        self._policies_of: dict[str, set[str]] = {}  # operation -> policies seen on it

    def observe(self, operation: str, headers: dict[str, str] | object) -> None:
        """Record the ``RateLimit`` field of an answer to ``operation``."""
        value = headers.get("RateLimit") if hasattr(headers, "get") else None
        if not value:
            return
        now = self._clock()
        with self._lock:
            seen = self._policies_of.setdefault(operation, set())
            for name, params in parse_items(value).items():
                seen.add(name)
                remaining, window = _number(params.get("r")), _number(params.get("t"))
                if remaining is not None and remaining <= 0:
                    # t is rounded down by the server: the next token may be up to 1 s later.
                    self._empty_until[name] = now + (window or 0) + 1
                else:
                    self._empty_until.pop(name, None)

    def wait_s(self, operation: str) -> float:
        """Seconds to wait before ``operation`` has room in every policy it met (0: now)."""
        now = self._clock()
        with self._lock:
            policies = self._policies_of.get(operation, set())
            until = max((self._empty_until.get(name, 0.0) for name in policies), default=0.0)
        return max(0.0, until - now)
