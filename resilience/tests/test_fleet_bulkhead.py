"""Fleet bulkheads: one count across every process, in Redis, with leases.

A prefork Celery child runs one task at a time, so a per-process semaphore there can
never fill. The fleet bulkhead bounds what needs bounding: concurrent calls to one
target across every process (adr/0007). Tested against the suite's real Redis, across
real processes, and against a Redis of our own that we kill.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import pytest

from resilience import metrics
from resilience.bulkhead import BulkheadFullError, FleetBulkhead, bulkhead
from resilience.policies import BulkheadPolicy, TimeoutPolicy
from resilience.registry import reset_all
from tests.processes import wait_for


def fleet(name: str, *, slots: int = 2, lease_s: float = 30.0) -> FleetBulkhead:
    policy = BulkheadPolicy(
        max_concurrent=slots, scope="fleet", runs_in="webhooks", lease_s=lease_s
    )
    return FleetBulkhead(name, policy)


def hold_in_child(name: str, slots: int, lease_s: float, held, release) -> None:
    """A separate process holding one slot until told to let go (or killed)."""
    reset_all()  # a forked child builds its own Redis connections
    with fleet(name, slots=slots, lease_s=lease_s).slot():
        held.set()
        release.wait(30)


@pytest.fixture
def fork():
    return multiprocessing.get_context("fork")


def test_slots_are_counted_across_processes(fork):
    name = f"webhook:fleet-{os.getpid()}-a"
    held = [fork.Event(), fork.Event()]
    release = fork.Event()
    children = [
        fork.Process(target=hold_in_child, args=(name, 2, 30.0, held[i], release)) for i in range(2)
    ]
    for child in children:
        child.start()
    try:
        for event in held:
            assert event.wait(15)
        here = fleet(name)
        assert here.in_use() == 2
        with pytest.raises(BulkheadFullError), here.slot():
            pass
        release.set()
        for child in children:
            child.join(15)
        with here.slot():  # released by the children: a slot is free again
            assert here.in_use() == 1
    finally:
        release.set()
        for child in children:
            if child.is_alive():
                child.kill()


def test_a_killed_holder_frees_its_slot_when_the_lease_runs_out(fork):
    name = f"webhook:fleet-{os.getpid()}-b"
    held, release = fork.Event(), fork.Event()
    child = fork.Process(target=hold_in_child, args=(name, 1, 1.0, held, release))
    child.start()
    try:
        assert held.wait(15)
        child.kill()  # SIGKILL: no release runs
        child.join(5)
        here = fleet(name, slots=1, lease_s=1.0)
        with pytest.raises(BulkheadFullError), here.slot():
            pass

        def free_again() -> bool:
            try:
                with here.slot():
                    return True
            except BulkheadFullError:
                return False

        wait_for(free_again, timeout=5, interval=0.1, what="the dead holder's lease to expire")
    finally:
        if child.is_alive():
            child.kill()


def test_threads_of_one_process_share_the_same_count():
    name = f"webhook:fleet-{os.getpid()}-c"
    inside, release = threading.Barrier(3), threading.Event()

    def hold():
        with fleet(name).slot():
            inside.wait(5)
            release.wait(5)

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for holder in holders:
        holder.start()
    inside.wait(5)
    try:
        with pytest.raises(BulkheadFullError), fleet(name).slot():
            pass
    finally:
        release.set()
        for holder in holders:
            holder.join(5)


def test_while_redis_is_out_each_process_bounds_itself(own_redis, monkeypatch):
    """Redis killed: no refusal of all work, no unbounded work; a local count instead."""
    import redis as redis_py

    client = redis_py.Redis.from_url(
        own_redis.url, socket_timeout=0.2, socket_connect_timeout=0.2, decode_responses=True
    )
    monkeypatch.setattr("resilience.bulkhead._shared_state_redis", lambda: client)
    name = f"webhook:fleet-{os.getpid()}-d"
    here = fleet(name)
    with here.slot():
        assert here.in_use() == 1
    own_redis.kill()
    fallbacks = metrics.BULKHEAD_FALLBACK.labels("webhook")._value.get()
    with here.slot(), here.slot(), pytest.raises(BulkheadFullError), here.slot():
        pass  # two local slots held, the third refused
    assert metrics.BULKHEAD_FALLBACK.labels("webhook")._value.get() > fallbacks


def test_the_webhook_template_gives_each_host_its_own_fleet_bulkhead():
    one, other = bulkhead("webhook:slow.example"), bulkhead("webhook:fast.example")
    assert isinstance(one, FleetBulkhead)
    assert isinstance(other, FleetBulkhead)
    assert one.key != other.key
    assert one.key.count("{") == 1  # one hash tag: a single Redis Cluster slot
    timeouts = TimeoutPolicy(connect_s=1.0, read_s=5.0)
    assert one.lease_s == pytest.approx(timeouts.connect_s + timeouts.read_s + 5.0)


def test_slots_are_granted_at_once_without_waiting():
    name = f"webhook:fleet-{os.getpid()}-e"
    started = time.perf_counter()
    for _ in range(20):
        with fleet(name).slot():
            pass
    assert time.perf_counter() - started < 5  # bounded, not a performance claim
