"""Semaphore bulkheads: a cap on concurrent calls to one dependency, per process.

When a slow dependency holds every slot, further callers are refused after a short
wait (``max_wait_s``, clipped to the request deadline) instead of piling up threads:
the rest of the service keeps its capacity. The database bulkhead is a different
mechanism: separate connection pools per workload (``resilience.db_routing``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from resilience import deadline, metrics
from resilience.policies import BulkheadPolicy, get_policy

logger = logging.getLogger(__name__)


class BulkheadFullError(Exception):
    """Every slot of the dependency's bulkhead is taken; the call was not made."""

    def __init__(self, dependency: str) -> None:
        self.dependency = dependency
        super().__init__(f"bulkhead for {dependency} is full")


class Bulkhead:
    """At most ``max_concurrent`` holders at once; others wait up to ``max_wait_s``."""

    def __init__(self, name: str, policy: BulkheadPolicy) -> None:
        self.name = name
        self.policy = policy
        self._slots = threading.BoundedSemaphore(policy.max_concurrent)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the block, or raise :class:`BulkheadFullError`."""
        wait = deadline.clip(self.policy.max_wait_s) if self.policy.max_wait_s else 0
        acquired = (
            self._slots.acquire(timeout=wait) if wait else self._slots.acquire(blocking=False)
        )
        if not acquired:
            metrics.BULKHEAD_REJECTED.labels(self.name).inc()
            logger.warning(
                "bulkhead rejected",
                extra={"dependency": self.name, "max_concurrent": self.policy.max_concurrent},
            )
            raise BulkheadFullError(self.name)
        gauge = metrics.BULKHEAD_IN_USE.labels(self.name)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()
            self._slots.release()


_bulkheads: dict[str, Bulkhead] = {}
_lock = threading.Lock()


def bulkhead(dependency: str) -> Bulkhead | None:
    """The bulkhead of ``dependency`` in this process, or None when it has none."""
    with _lock:
        if dependency not in _bulkheads:
            policy = get_policy(dependency).bulkhead
            if policy is None:
                return None
            _bulkheads[dependency] = Bulkhead(dependency, policy)
        return _bulkheads[dependency]


def reset_bulkheads() -> None:
    """Forget every bulkhead (tests change the policies)."""
    with _lock:
        _bulkheads.clear()
