"""The sliding windows a breaker decides from, per process, as in resilience4j.

``count``: the outcomes of the last N calls; ``time``: the calls of the last N seconds,
in one-second buckets; ``consecutive``: pybreaker's classic run of failures. Each
records (failed, slow) per call and says whether the policy's thresholds are crossed
once ``minimum_calls`` are in it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from resilience.policies import BreakerPolicy


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


def window_for(policy: BreakerPolicy, clock: Callable[[], float]) -> Any:
    """The window the policy names: ``count``, ``time`` or ``consecutive``."""
    if policy.window == "count":
        return CountWindow(policy.window_size)
    if policy.window == "time":
        return TimeWindow(policy.window_size, clock)
    return ConsecutiveWindow()
