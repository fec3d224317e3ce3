"""Retry decisions: full-jitter backoff, ``Retry-After``, a retry budget and a deadline."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """How one logical call retries.

    ``deadline_s`` bounds the whole call, retries and waits included. Backoff is full
    jitter (a uniform draw in ``[0, min(max_delay_s, base_delay_s * 2**retry)]``); a
    ``Retry-After`` from the server is a floor, with a little jitter on top so clients
    told the same second do not come back together.
    """

    max_attempts: int = 4
    base_delay_s: float = 0.2
    max_delay_s: float = 10.0
    deadline_s: float = 30.0
    attempt_timeout_s: float = 10.0
    connect_timeout_s: float = 3.05

    def backoff_s(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to sleep before retry number ``retry`` (1 for the first retry)."""
        if retry_after is not None:
            return retry_after + rng.uniform(0, self.base_delay_s)
        return rng.uniform(0, min(self.max_delay_s, self.base_delay_s * 2 ** (retry - 1)))


class RetryBudget:
    """Retries may add at most ``ratio`` of the calls' first attempts (plus a small reserve).

    Each first attempt deposits ``ratio`` of a token, each retry withdraws one; the
    balance starts at ``reserve`` and never exceeds it plus what was deposited recently
    (capped at ``cap``). Under a dead dependency a fleet of these clients multiplies the
    load by at most ``1 + ratio``, instead of by ``max_attempts``. Thread-safe.
    """

    def __init__(self, ratio: float = 0.2, *, reserve: float = 3.0, cap: float = 20.0) -> None:
        self.ratio = ratio
        self.cap = cap
        self._tokens = reserve
        self._lock = threading.Lock()
        self.first_attempts = 0
        self.retries = 0
        self.refused = 0

    def record_first_attempt(self) -> None:
        with self._lock:
            self.first_attempts += 1
            self._tokens = min(self.cap, self._tokens + self.ratio)

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when it is spent."""
        with self._lock:
            if self._tokens >= 1:
                self._tokens -= 1
                self.retries += 1
                return True
            self.refused += 1
            return False
