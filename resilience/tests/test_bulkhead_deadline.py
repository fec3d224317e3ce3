"""Bulkheads refuse fast when full; deadlines clip timeouts and stop new calls."""

from __future__ import annotations

import threading
import time

import pytest

from resilience import deadline
from resilience.bulkhead import Bulkhead, BulkheadFullError
from resilience.policies import BulkheadPolicy


def test_a_full_bulkhead_refuses_after_its_short_wait():
    bulkhead = Bulkhead("bh-test", BulkheadPolicy(max_concurrent=2, max_wait_s=0.05))
    holding, release = threading.Barrier(3), threading.Event()

    def hold():
        with bulkhead.slot():
            holding.wait(timeout=5)
            release.wait(timeout=5)

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for holder in holders:
        holder.start()
    holding.wait(timeout=5)
    started = time.perf_counter()
    with pytest.raises(BulkheadFullError), bulkhead.slot():
        pass
    refused_after = time.perf_counter() - started
    release.set()
    for holder in holders:
        holder.join(timeout=5)
    assert refused_after < 0.5  # a short wait, not a queue
    with bulkhead.slot():  # slots come back
        pass


def test_deadline_clips_timeouts_and_nests_to_the_earliest():
    assert deadline.remaining() is None
    assert deadline.clip(3.0) == 3.0
    with deadline.deadline(1.0):
        assert 0.9 < deadline.clip(3.0) <= 1.0
        with deadline.deadline(10.0):  # an inner budget never extends the outer one
            assert deadline.remaining() <= 1.0
    assert deadline.remaining() is None


def test_a_spent_deadline_refuses_new_calls():
    with deadline.deadline(0.0), pytest.raises(deadline.DeadlineExceededError):
        deadline.ensure_time_left("payments")
