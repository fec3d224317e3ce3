"""The breaker: opens on failures, refuses without calling, one trial, shared state."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pybreaker
import pytest
import redis

from resilience import metrics
from resilience.breakers import Breaker, BreakerOpenError, SharedStateStorage, breaker
from tests.processes import free_port


class Boom(Exception):
    pass


class NotOurFault(Exception):
    pass


def make_breaker(name="test-dep", *, fail_max=3, reset_timeout=30.0, storage=None) -> Breaker:
    return Breaker(
        name,
        fail_max=fail_max,
        reset_timeout=reset_timeout,
        exclude=[NotOurFault],
        state_storage=storage or pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED),
    )


def elapse_open_period(cb: Breaker) -> None:
    """Pretend the open period is over (no sleeping)."""
    cb._state_storage.opened_at = datetime.now(UTC) - timedelta(seconds=cb.reset_timeout + 1)


def fail(cb: Breaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises((Boom, BreakerOpenError)):
            cb.call(lambda: (_ for _ in ()).throw(Boom()))


def test_concurrent_calls_are_not_serialised():
    """pybreaker 1.4 holds its lock during the call; ours must not (16 x 100 ms)."""
    cb = make_breaker()
    barrier = threading.Barrier(16)

    def slow_call():
        barrier.wait(timeout=5)
        cb.call(time.sleep, 0.1)

    threads = [threading.Thread(target=slow_call) for _ in range(16)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.8, f"16 concurrent 100 ms calls took {elapsed:.2f} s (serialised: 1.6 s)"


def test_plain_pybreaker_would_serialise_them():
    """The control: the library as shipped serialises, which is why Breaker exists."""
    cb = pybreaker.CircuitBreaker(fail_max=3)
    threads = [threading.Thread(target=cb.call, args=(time.sleep, 0.1)) for _ in range(4)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert time.perf_counter() - started >= 0.4


def test_opens_after_fail_max_and_then_never_calls_the_dependency():
    cb = make_breaker(fail_max=3)
    calls = []

    def dependency():
        calls.append(1)
        raise Boom

    for _ in range(3):
        with pytest.raises(Boom):  # the original error, not wrapped
            cb.call(dependency)
    assert cb.current_state == "open"
    for _ in range(10):
        with pytest.raises(BreakerOpenError) as refused:
            cb.call(dependency)
        assert refused.value.retry_after_s > 0
    assert len(calls) == 3


def test_business_errors_do_not_count():
    cb = make_breaker(fail_max=2)
    for _ in range(5):
        with pytest.raises(NotOurFault):
            cb.call(lambda: (_ for _ in ()).throw(NotOurFault()))
    assert cb.current_state == "closed"


def test_half_open_lets_exactly_one_trial_through():
    cb = make_breaker(fail_max=1)
    fail(cb, 1)
    elapse_open_period(cb)
    trial_started, release = threading.Event(), threading.Event()
    calls = []

    def trial():
        calls.append("trial")
        trial_started.set()
        release.wait(timeout=5)
        return "ok"

    results = []
    worker = threading.Thread(target=lambda: results.append(cb.call(trial)))
    worker.start()
    assert trial_started.wait(timeout=5)
    with pytest.raises(BreakerOpenError):
        cb.call(lambda: calls.append("second"))
    release.set()
    worker.join(timeout=5)
    assert results == ["ok"]
    assert calls == ["trial"]
    assert cb.current_state == "closed"


def test_a_failed_trial_reopens():
    cb = make_breaker(fail_max=1)
    fail(cb, 1)
    elapse_open_period(cb)
    fail(cb, 1)
    assert cb.current_state == "open"
    assert cb.open_remaining_s() > 0


def test_transitions_and_refusals_are_counted():
    cb = make_breaker("metrics-dep", fail_max=1)
    cb.add_listener(
        __import__("resilience.breakers", fromlist=["MetricsListener"]).MetricsListener()
    )
    opened = metrics.BREAKER_TRANSITIONS.labels("metrics-dep", "closed", "open")
    refused = metrics.BREAKER_NOT_PERMITTED.labels("metrics-dep")
    before_open, before_refused = opened._value.get(), refused._value.get()
    fail(cb, 1)
    with pytest.raises(BreakerOpenError):
        cb.call(lambda: None)
    assert opened._value.get() == before_open + 1
    assert refused._value.get() == before_refused + 1
    assert metrics.BREAKER_STATE.labels("metrics-dep")._value.get() == 2


@pytest.mark.django_db
def test_shared_state_is_seen_by_every_process():
    """Two breakers over the same Redis hash stand for two processes."""
    from resilience.breakers import _shared_state_redis

    web = make_breaker(
        "shared-dep", fail_max=2, storage=SharedStateStorage("shared-dep", _shared_state_redis)
    )
    worker = make_breaker(
        "shared-dep", fail_max=2, storage=SharedStateStorage("shared-dep", _shared_state_redis)
    )
    fail(web, 2)
    assert web.current_state == "open"
    calls = []
    with pytest.raises(BreakerOpenError):
        worker.call(lambda: calls.append(1))
    assert calls == []
    worker.close()
    assert web.current_state == "closed"


def test_shared_state_falls_back_to_process_memory_when_redis_is_down():
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.05, socket_timeout=0.05)
    cb = make_breaker(
        "orphan-dep", fail_max=2, storage=SharedStateStorage("orphan-dep", lambda: dead)
    )
    fail(cb, 2)
    assert cb.current_state == "open"  # the local mirror still opened it
    started = time.perf_counter()
    for _ in range(20):
        with pytest.raises(BreakerOpenError):
            cb.call(lambda: None)
    # The redis breaker opened too, so later checks skip the dead Redis entirely.
    assert breaker("redis").current_state == "open"
    assert time.perf_counter() - started < 1.0


def test_force_open_holds_until_closed():
    cb = make_breaker(fail_max=5)
    cb.force_open()
    elapse_open_period(cb)  # an ordinary open period would be over...
    cb.force_open()
    with pytest.raises(BreakerOpenError):
        cb.call(lambda: None)  # ...but forced open stays open
    cb.close()
    assert cb.call(lambda: "ok") == "ok"
