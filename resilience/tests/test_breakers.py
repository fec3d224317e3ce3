"""The breaker: sliding windows, slow calls, half-open permits, shared state, pybreaker pin.

Rates are tested against a real HTTP dependency (the payments simulator on free ports,
its latency and faults switched per test); shared state against the suite's Redis and
a redis-server of the test's own that it kills.
"""

from __future__ import annotations

import importlib.metadata
import threading
import time
from datetime import UTC, datetime, timedelta

import pybreaker
import pytest
import redis
import requests
from redis.backoff import NoBackoff
from redis.retry import Retry

from resilience import metrics
from resilience.breaker_state import MemoryStorage, SharedStateStorage, _shared_state_redis
from resilience.breakers import Breaker, MetricsListener, breaker
from resilience.errors import BreakerOpenError
from resilience.policies import BreakerPolicy
from tests.processes import free_port, wait_for

BODY = {"order_id": "o-1", "amount": 100, "currency": "EUR"}


class Boom(Exception):
    pass


class NotOurFault(Exception):
    pass


def is_failure(exc: BaseException) -> bool:
    return isinstance(exc, Boom | requests.RequestException)


def make_breaker(name="test-dep", *, storage=None, clock=time.monotonic, **policy) -> Breaker:
    defaults = {
        "window": "count",
        "window_size": 10,
        "minimum_calls": 5,
        "failure_rate": 0.5,
        "slow_call_s": 1.0,
        "slow_call_rate": 0.5,
        "half_open_calls": 3,
        "reset_timeout_s": 30.0,
    }
    return Breaker(
        name,
        BreakerPolicy(**{**defaults, **policy}),
        is_failure=is_failure,
        storage=storage,
        listeners=(MetricsListener(),),
        clock=clock,
    )


def elapse_open_period(cb: Breaker) -> None:
    """Pretend the open period is over (no sleeping)."""
    cb.storage.opened_at = datetime.now(UTC) - timedelta(seconds=cb.reset_timeout + 0.1)


def fail(cb: Breaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises((Boom, BreakerOpenError)):
            cb.call(lambda: (_ for _ in ()).throw(Boom()))


_keys = iter(range(1, 1_000_000))


def authorize(payments) -> int:
    """One real authorisation request; 5xx and 429 raise (they count as failures)."""
    response = requests.post(
        f"{payments.api_url}/authorizations",
        json=BODY,
        headers={"Idempotency-Key": f"key-{next(_keys)}"},
        timeout=(0.25, 2.0),
    )
    response.raise_for_status()
    return response.status_code


# --- Opening on what users feel ----------------------------------------------------------


def test_calls_twice_the_slow_threshold_open_the_breaker(payments):
    cb = make_breaker(slow_call_s=0.1, minimum_calls=5)
    payments.set_faults(latency_ms=200)  # every call succeeds, in 2x the threshold
    for _ in range(5):
        assert cb.call(authorize, payments) in (200, 201)
    assert cb.current_state == "open"
    sent = payments.stats()["requests"]
    with pytest.raises(BreakerOpenError) as refused:
        cb.call(authorize, payments)
    assert refused.value.retry_after_s > 0
    assert payments.stats()["requests"] == sent  # refused without touching payments


def test_slow_payments_open_the_payments_breaker_through_the_client(payments, settings):
    """The same through the real composition: client -> calls -> breaker (times the call)."""
    from conftest import override_policy
    from resilience.http import client

    override_policy(
        settings, "payments", breaker={"slow_call_s": 0.1, "minimum_calls": 5, "window_size": 10}
    )
    payments.set_faults(latency_ms=200)
    for n in range(5):
        answer = client("payments").request(
            "POST", "/authorizations", json=BODY, idempotency_key=f"slow-{n}"
        )
        assert answer.status_code == 201
    assert breaker("payments").current_state == "open"
    with pytest.raises(BreakerOpenError):
        client("payments").request("POST", "/authorizations", json=BODY, idempotency_key="x")


def test_fast_successes_keep_it_closed_even_with_a_slow_threshold(payments):
    cb = make_breaker(slow_call_s=0.5, minimum_calls=5)
    for _ in range(20):
        cb.call(authorize, payments)
    assert cb.current_state == "closed"
    assert cb.window_rates() == (10, 0.0, 0.0)


def test_a_failure_rate_below_the_threshold_does_not_open(payments):
    cb = make_breaker(window_size=20, minimum_calls=10, failure_rate=0.5)
    payments.set_faults(fail_first_n=4, error_status=500)
    outcomes = []
    for _ in range(10):
        try:
            cb.call(authorize, payments)
            outcomes.append("ok")
        except requests.HTTPError:
            outcomes.append("failed")
    assert outcomes.count("failed") == 4
    assert cb.current_state == "closed"  # 40% < 50%
    assert cb.window_rates() == (10, 0.4, 0.0)
    # The control: two more failures make 6 of 12, which opens it.
    payments.set_faults(fail_first_n=2)
    with pytest.raises(requests.HTTPError):
        cb.call(authorize, payments)
    assert cb.current_state == "closed"  # 5 of 11
    with pytest.raises(requests.HTTPError):
        cb.call(authorize, payments)
    assert cb.current_state == "open"


def test_fewer_calls_than_the_minimum_never_open(payments):
    cb = make_breaker(window_size=20, minimum_calls=10)
    payments.set_faults(down=True)  # connection refused: every call fails
    for _ in range(9):
        with pytest.raises(requests.ConnectionError):
            cb.call(authorize, payments)
    assert cb.current_state == "closed"
    assert cb.window_rates() == (9, 1.0, 0.0)
    with pytest.raises(requests.ConnectionError):
        cb.call(authorize, payments)  # the tenth
    assert cb.current_state == "open"


def test_a_time_window_forgets_calls_older_than_its_size():
    now = [1000.0]
    cb = make_breaker(window="time", window_size=10, minimum_calls=5, clock=lambda: now[0])
    fail(cb, 4)
    now[0] += 11  # those four left the window
    fail(cb, 4)
    assert cb.current_state == "closed"
    assert cb.window_rates()[0] == 4
    fail(cb, 1)
    assert cb.current_state == "open"


def test_consecutive_mode_counts_failures_in_a_row():
    cb = make_breaker(window="consecutive", fail_max=3)
    fail(cb, 2)
    cb.call(lambda: "ok")  # a success resets the count
    fail(cb, 2)
    assert cb.current_state == "closed"
    fail(cb, 1)
    assert cb.current_state == "open"


def test_business_errors_do_not_count():
    cb = make_breaker(minimum_calls=2, window_size=2)
    for _ in range(5):
        with pytest.raises(NotOurFault):
            cb.call(lambda: (_ for _ in ()).throw(NotOurFault()))
    assert cb.current_state == "closed"


# --- Half-open ------------------------------------------------------------------------------


def test_half_open_lets_exactly_the_permitted_number_through(payments):
    cb = make_breaker(half_open_calls=3)
    cb.open()
    elapse_open_period(cb)
    gate = threading.Event()
    entered, refused, served = [], [], []
    lock = threading.Lock()

    def trial():
        with lock:
            entered.append(1)
        gate.wait(timeout=10)
        return authorize(payments)

    def caller():
        try:
            result = cb.call(trial)
        except BreakerOpenError:
            with lock:
                refused.append(1)
        else:
            with lock:
                served.append(result)

    threads = [threading.Thread(target=caller) for _ in range(10)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(entered) + len(refused) == 10, timeout=10, what="every caller decided")
    gate.set()
    for thread in threads:
        thread.join(timeout=10)
    assert (len(entered), len(refused), len(served)) == (3, 7, 3)
    assert payments.stats()["requests"] == 3
    assert cb.current_state == "closed"  # the three trials succeeded


def test_failed_trials_reopen():
    cb = make_breaker(half_open_calls=3, failure_rate=0.5)
    cb.open()
    elapse_open_period(cb)
    cb.call(lambda: "ok")
    fail(cb, 1)
    assert cb.current_state == "half-open"  # 1 of 3 failed: not yet 50%
    fail(cb, 1)
    assert cb.current_state == "open"  # 2 of 3 failed
    assert cb.open_remaining_s() > 0


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


# --- Metrics, operator switches -----------------------------------------------------------


def test_transitions_refusals_and_slow_calls_are_counted():
    cb = make_breaker("metrics-dep", slow_call_s=0.01, minimum_calls=2, window_size=2)
    opened = metrics.BREAKER_TRANSITIONS.labels("metrics-dep", "closed", "open")
    refused = metrics.BREAKER_NOT_PERMITTED.labels("metrics-dep")
    slow = metrics.BREAKER_SLOW_CALLS.labels("metrics-dep")
    before = opened._value.get(), refused._value.get(), slow._value.get()
    cb.call(time.sleep, 0.02)
    assert metrics.BREAKER_SLOW_CALL_RATE.labels("metrics-dep")._value.get() == 1.0
    cb.call(time.sleep, 0.02)
    with pytest.raises(BreakerOpenError):
        cb.call(lambda: None)
    assert opened._value.get() == before[0] + 1
    assert refused._value.get() == before[1] + 1
    assert slow._value.get() == before[2] + 2
    assert metrics.BREAKER_STATE.labels("metrics-dep")._value.get() == 2


def test_force_open_holds_until_closed():
    cb = make_breaker()
    cb.force_open()
    elapse_open_period(cb)  # an ordinary open period would be over...
    with pytest.raises(BreakerOpenError):
        cb.call(lambda: None)  # ...but forced open stays open
    assert cb.forced
    cb.close()
    assert not cb.forced
    assert cb.call(lambda: "ok") == "ok"


# --- Shared state -----------------------------------------------------------------------------


def no_state_cache(settings) -> None:
    """Processes see each other's transitions at once (in production: within 0.1 s)."""
    settings.RESILIENCE = {**settings.RESILIENCE, "breaker_state_cache_s": 0.0}


@pytest.mark.django_db
def test_shared_state_is_seen_by_every_process(settings):
    """Two breakers over the same Redis hash stand for two processes."""
    no_state_cache(settings)
    web = make_breaker("shared-dep", storage=SharedStateStorage("shared-dep", _shared_state_redis))
    worker = make_breaker(
        "shared-dep", storage=SharedStateStorage("shared-dep", _shared_state_redis)
    )
    fail(web, 5)
    assert web.current_state == "open"
    calls = []
    with pytest.raises(BreakerOpenError):
        worker.call(lambda: calls.append(1))
    assert calls == []
    worker.close()
    assert web.current_state == "closed"


def test_half_open_permits_are_counted_for_the_fleet_when_shared(settings):
    no_state_cache(settings)
    storages = [SharedStateStorage("fleet-dep", _shared_state_redis) for _ in range(3)]
    fleet = [make_breaker("fleet-dep", storage=s, half_open_calls=2) for s in storages]
    fleet[0].open()
    elapse_open_period(fleet[0])
    gate = threading.Event()
    admitted, refused = [], []

    def caller(cb):
        try:
            cb.call(lambda: (admitted.append(1), gate.wait(timeout=10)))
        except BreakerOpenError:
            refused.append(1)

    threads = [threading.Thread(target=caller, args=(cb,)) for cb in fleet * 2]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(admitted) + len(refused) == 6, timeout=10, what="every caller decided")
    gate.set()
    for thread in threads:
        thread.join(timeout=10)
    assert (len(admitted), len(refused)) == (2, 4)
    assert all(cb.current_state == "closed" for cb in fleet)


def test_shared_state_falls_back_to_process_memory_when_its_redis_dies(own_redis):
    client = redis.Redis.from_url(
        own_redis.url,
        socket_connect_timeout=0.05,
        socket_timeout=0.05,
        retry=Retry(NoBackoff(), retries=0),
        decode_responses=True,
    )
    cb = make_breaker("orphan-dep", storage=SharedStateStorage("orphan-dep", lambda: client))
    fail(cb, 5)
    assert cb.current_state == "open"
    assert client.hget("resilience:breaker:orphan-dep", "state") == "open"
    cb.close()
    own_redis.kill()
    fail(cb, 5)
    assert cb.current_state == "open"  # the local mirror still opened it
    started = time.perf_counter()
    for _ in range(20):
        with pytest.raises(BreakerOpenError):
            cb.call(lambda: None)
    # The redis breaker opened too, so later checks skip the dead Redis entirely.
    assert breaker("redis").current_state == "open"
    assert time.perf_counter() - started < 1.0


def test_a_dead_redis_port_is_the_same_fallback():
    dead = redis.Redis(
        port=free_port(),
        socket_connect_timeout=0.05,
        socket_timeout=0.05,
        retry=Retry(NoBackoff(), retries=0),
    )
    cb = make_breaker("dead-dep", storage=SharedStateStorage("dead-dep", lambda: dead))
    fail(cb, 5)
    assert cb.current_state == "open"


# --- pybreaker: the behaviour we rely on, pinned ---------------------------------------------


class Recorder(pybreaker.CircuitBreakerListener):
    def __init__(self) -> None:
        self.changes: list[tuple[str | None, str]] = []

    def state_change(self, cb, old_state, new_state) -> None:
        self.changes.append((old_state.name if old_state else None, new_state.name))


def test_pybreaker_version_and_the_public_behaviour_breaker_relies_on():
    """Fails on an upgrade that changes what Breaker uses; re-read breakers.py then."""
    assert importlib.metadata.version("pybreaker") == "1.4.1"
    storage, recorder = MemoryStorage(), Recorder()
    cb = pybreaker.CircuitBreaker(
        name="pin", state_storage=storage, listeners=[recorder], throw_new_error_on_trip=False
    )
    assert cb.current_state == pybreaker.STATE_CLOSED == "closed"
    before = datetime.now(UTC)
    cb.open()  # writes opened_at and the state to our storage, tells listeners once
    assert storage.state == "open"
    assert storage.opened_at is not None
    assert storage.opened_at >= before
    assert recorder.changes == [("closed", "open")]
    opened_at = storage.opened_at
    cb.half_open()
    cb.close()
    assert storage.opened_at == opened_at  # half_open and close keep the episode's start
    assert recorder.changes[1:] == [("open", "half-open"), ("half-open", "closed")]
    # A change written to the storage by someone else (another process) is noticed on the
    # next read of `state`, and told to the listeners, without touching opened_at.
    storage.state = "open"
    assert cb.state.name == "open"
    assert recorder.changes[-1] == ("closed", "open")
    assert storage.opened_at == opened_at
    assert cb.reset_timeout == 60
    assert cb.name == "pin"
    assert issubclass(BreakerOpenError, pybreaker.CircuitBreakerError)
    assert {pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN} == {"open", "half-open"}


class CountingClient:
    """The suite's real Redis client, counting the commands a breaker sends."""

    def __init__(self) -> None:
        self.client = _shared_state_redis()
        self.sent: list[str] = []

    def __getattr__(self, name):
        self.sent.append(name)
        return getattr(self.client, name)


def test_a_closed_shared_breaker_reads_redis_once_per_cache_period(settings):
    """Every Postgres query passes the breaker: it must not cost a Redis round trip each."""
    settings.RESILIENCE = {**settings.RESILIENCE, "breaker_state_cache_s": 60.0}
    counting = CountingClient()
    cb = make_breaker("cached-dep", storage=SharedStateStorage("cached-dep", lambda: counting))
    cb.call(lambda: None)
    sent = len(counting.sent)
    for _ in range(100):
        cb.call(lambda: None)
    assert len(counting.sent) == sent  # no Redis command for 100 calls
    # An opening elsewhere is still seen once the cached read is older than the period.
    settings.RESILIENCE = {**settings.RESILIENCE, "breaker_state_cache_s": 0.0}
    make_breaker("cached-dep", storage=SharedStateStorage("cached-dep", _shared_state_redis)).open()
    with pytest.raises(BreakerOpenError):
        cb.call(lambda: None)


def test_an_open_shared_breaker_decides_on_one_read_of_its_state(settings):
    """A refusal reads the state, the forced flag, the opening time and the probe's
    heartbeat: one HGETALL, not a round trip each (they were six per refused call)."""
    settings.RESILIENCE = {**settings.RESILIENCE, "breaker_state_cache_s": 0.0}
    counting = CountingClient()
    cb = make_breaker(
        "batched-dep",
        storage=SharedStateStorage("batched-dep", lambda: counting),
        reset_timeout_s=60,
    )
    cb.open()
    try:
        for _ in range(5):
            counting.sent.clear()
            with pytest.raises(BreakerOpenError) as refused:
                cb.call(lambda: None)
            assert counting.sent == ["hgetall"]
        assert 0 < refused.value.retry_after_s <= 60
        # A state changed in Redis by another process is still what decides.
        make_breaker(
            "batched-dep", storage=SharedStateStorage("batched-dep", _shared_state_redis)
        ).close()
        assert cb.call(lambda: "through") == "through"
    finally:
        cb.close()
