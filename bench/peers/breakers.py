"""Circuit breakers side by side: ours, pybreaker 1.4, circuitbreaker, aiobreaker, purgatory.

Each breaker guards the same call (an HTTP GET to a loopback dependency, 5xx raising) and
gets the same numbers: the failure threshold of the shipped payments policy and one
reset timeout. Ours is used only through ``breaker(name).call(func)`` and the policy
settings. Measured:

1. 16 threads making a 100 ms call through one breaker at once (wall time);
2. calls that reach a dependency answering 503 for ``dead_s`` seconds, from 8 clients
   calling back to back (a refused call makes the client pause 10 ms);
3. time from the dependency's recovery to the first call that succeeds, the dependency
   healing just after a failed call (a trial): the worst case of waiting out a reset;
4. whether a second process sees an opening (each library with its shared storage, if
   it has one; a new breaker object over the same store stands for the other process).

aiobreaker and purgatory are asyncio-first; both also ship a synchronous API, used here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import requests

from bench.peers.dependency import FAILING, HEALTHY, Dependency

THREADS = 16
CALL_S = 0.1
CLIENTS = 8
DEAD_S = 10.0
RESET_S = 2.0
PAUSE_S = 0.01
TIMEOUT_S = (0.25, 1.0)

# What each library raises when it refuses a call.
OPEN_ERRORS = {"BreakerOpenError", "CircuitBreakerError", "OpenedState"}
Call = Callable[[Callable[[], object]], object]


def shipped_fail_max() -> int:
    from bench.peers.ours import shipped_policy

    return int(shipped_policy().get("breaker", {}).get("fail_max", 5))


class Peer:
    name: str = ""
    shared_store: str = ""  # how it shares state across processes; "" when it cannot

    def make(self, key: str, *, fail_max: int, reset_s: float, shared: bool = False) -> Call:
        raise NotImplementedError


class Ours(Peer):
    name = "ours (resilience.breakers)"
    shared_store = "Redis (policy shared: true)"

    def make(self, key: str, *, fail_max: int, reset_s: float, shared: bool = False) -> Call:
        from resilience import registry
        from resilience.breakers import breaker

        if shared:
            # A new process: no breaker built yet, only what Redis holds.
            registry.forget(registry.BREAKER)
        return lambda func: breaker(key).call(func)


class PyBreaker(Peer):
    name = "pybreaker 1.4"
    shared_store = "CircuitRedisStorage"

    def make(self, key: str, *, fail_max: int, reset_s: float, shared: bool = False) -> Call:
        import pybreaker

        storage = None
        if shared:
            storage = pybreaker.CircuitRedisStorage(
                pybreaker.STATE_CLOSED, redis_client(), namespace=key
            )
        cb = pybreaker.CircuitBreaker(
            fail_max=fail_max, reset_timeout=reset_s, state_storage=storage, name=key
        )
        return cb.call


class CircuitBreakerLib(Peer):
    name = "circuitbreaker 2.1"

    def make(self, key: str, *, fail_max: int, reset_s: float, shared: bool = False) -> Call:
        from circuitbreaker import CircuitBreaker

        cb = CircuitBreaker(
            failure_threshold=fail_max,
            recovery_timeout=reset_s,
            expected_exception=Exception,
            name=key,
        )
        # Its decorator, as documented: CircuitBreaker.call() alone never checks the state
        # (2.1.3 enters a context manager that only counts), so it would never refuse.
        wrapped: dict[int, Callable[[], object]] = {}

        def call(func: Callable[[], object]) -> object:
            if id(func) not in wrapped:
                wrapped[id(func)] = cb.decorate(func)
            return wrapped[id(func)]()

        return call


class AioBreaker(Peer):
    name = "aiobreaker 1.2 (sync call)"
    shared_store = "CircuitRedisStorage"

    def make(self, key: str, *, fail_max: int, reset_s: float, shared: bool = False) -> Call:
        from aiobreaker import CircuitBreaker, CircuitBreakerState
        from aiobreaker.storage.redis import CircuitRedisStorage

        storage = None
        if shared:
            storage = CircuitRedisStorage(CircuitBreakerState.CLOSED, redis_client(), namespace=key)
        cb = CircuitBreaker(
            fail_max=fail_max,
            timeout_duration=timedelta(seconds=reset_s),
            state_storage=storage,
            name=key,
        )
        return cb.call


class Purgatory(Peer):
    name = "purgatory 3.0 (sync factory)"
    shared_store = "SyncRedisUnitOfWork"

    def make(self, key: str, *, fail_max: int, reset_s: float, shared: bool = False) -> Call:
        from purgatory import SyncCircuitBreakerFactory, SyncRedisUnitOfWork

        uow = SyncRedisUnitOfWork(redis_url()) if shared else None
        factory = SyncCircuitBreakerFactory(
            default_threshold=fail_max, default_ttl=reset_s, uow=uow
        )
        factory.initialize()

        def call(func: Callable[[], object]) -> object:
            with factory.get_breaker(key):
                return func()

        return call


PEERS: list[Peer] = [Ours(), PyBreaker(), CircuitBreakerLib(), AioBreaker(), Purgatory()]


def redis_url() -> str:
    from django.conf import settings

    return settings.REDIS_URL


def redis_client():
    import redis

    return redis.Redis.from_url(redis_url())


def http_call(url: str) -> Callable[[], object]:
    """The protected call: one GET; a 5xx raises as our client would (DownstreamHTTPError)."""
    from resilience.errors import DownstreamHTTPError

    def call() -> object:
        response = requests.get(url, timeout=TIMEOUT_S)
        if response.status_code >= 500:
            raise DownstreamHTTPError("peers_dependency", response, retry_after_s=None)
        return response.status_code

    return call


@dataclass
class Row:
    name: str
    concurrent_wall_s: float
    dead_calls: int
    dead_calls_per_s: float
    recovery_s: float | None
    shared: str


def concurrent_wall(call: Call) -> float:
    call(lambda: None)  # built and connected before the clock starts, for every library
    barrier = threading.Barrier(THREADS)

    def one() -> None:
        barrier.wait()
        call(lambda: time.sleep(CALL_S))

    threads = [threading.Thread(target=one) for _ in range(THREADS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREADS * CALL_S + 10)
    return time.perf_counter() - started


def dead_then_heal(dep: Dependency, call: Call, *, dead_s: float, reset_s: float):
    """Calls reaching the dependency while it fails; seconds to the first success after."""
    dep.reset(FAILING)
    protected = http_call(dep.url + "/")
    stop = threading.Event()
    healed_at: list[float] = []
    recovered: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        while not stop.is_set():
            try:
                call(protected)
            except Exception:  # noqa: BLE001 - failures and refusals alike
                time.sleep(PAUSE_S)
                continue
            with lock:
                if healed_at and not recovered:
                    recovered.append(time.monotonic() - healed_at[0])
            time.sleep(PAUSE_S)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(dead_s)  # the scenario's length: the figure is "calls during dead_s"
    dead_calls = dep.calls
    # Heal just after a call failed (a trial, once open): the worst case for a breaker
    # that must wait out its reset timeout before trying again.
    deadline = time.monotonic() + reset_s + 5
    while dep.calls == dead_calls and time.monotonic() < deadline:
        time.sleep(0.002)
    with lock:
        dep.reset(HEALTHY)
        healed_at.append(time.monotonic())
    deadline = time.monotonic() + reset_s + 10
    while time.monotonic() < deadline:
        with lock:
            if recovered:
                break
        time.sleep(0.01)
    stop.set()
    for thread in threads:
        thread.join(5)
    return dead_calls, (recovered[0] if recovered else None)


def shares_state(peer: Peer, dep: Dependency, *, fail_max: int, reset_s: float) -> str:
    """Open the breaker in one "process"; does a fresh one over the same store refuse?"""
    if not peer.shared_store:
        return "no (memory only)"
    import uuid

    from bench.peers.ours import fresh_name

    key = fresh_name() if isinstance(peer, Ours) else f"peers-{uuid.uuid4().hex[:8]}"
    dep.reset(FAILING)
    first = peer.make(key, fail_max=fail_max, reset_s=reset_s, shared=True)
    protected = http_call(dep.url + "/")
    for _ in range(fail_max + 2):
        try:
            first(protected)
        except Exception:  # noqa: BLE001, S112 - opening it on purpose
            continue
    second = peer.make(key, fail_max=fail_max, reset_s=reset_s, shared=True)
    before = dep.calls
    refusal = None
    try:
        second(protected)
    except Exception as exc:  # noqa: BLE001 - refused, failed or broken: told apart below
        refusal = exc
    if dep.calls != before:
        return "no (the other process called the dependency)"
    if type(refusal).__name__ in OPEN_ERRORS:
        return f"yes ({peer.shared_store})"
    return f"broken ({peer.shared_store}: {type(refusal).__name__})"


def run(*, dead_s: float = DEAD_S, reset_s: float = RESET_S) -> list[Row]:
    from bench.peers.ours import fresh_name, peer_dependency

    fail_max = shipped_fail_max()
    rows = []
    with Dependency() as dep, peer_dependency(dep.url, breaker={"reset_timeout_s": reset_s}):
        for peer in PEERS:
            key = fresh_name() if isinstance(peer, Ours) else f"{peer.name}-wall"
            wall = concurrent_wall(peer.make(key, fail_max=fail_max, reset_s=reset_s))
            key = fresh_name() if isinstance(peer, Ours) else f"{peer.name}-dead"
            call = peer.make(key, fail_max=fail_max, reset_s=reset_s)
            dead, recovery = dead_then_heal(dep, call, dead_s=dead_s, reset_s=reset_s)
            shared = shares_state(peer, dep, fail_max=fail_max, reset_s=reset_s)
            rows.append(Row(peer.name, wall, dead, dead / dead_s, recovery, shared))
    return rows


def report(rows: list[Row], *, dead_s: float = DEAD_S, reset_s: float = RESET_S) -> list[str]:
    head = f"{'breaker':<30} {'16x100ms wall':>13} {f'calls in {dead_s:.0f} s dead':>17}"
    lines = [f"{head} {'recovery':>9}  shared across processes"]
    for r in rows:
        recovery = f"{r.recovery_s:.2f} s" if r.recovery_s is not None else "never"
        lines.append(
            f"{r.name:<30} {r.concurrent_wall_s:>11.2f} s {r.dead_calls:>17}"
            f" {recovery:>9}  {r.shared}"
        )
    lines.append(
        f"(threshold {shipped_fail_max()} failures, reset timeout {reset_s:.0f} s,"
        f" {CLIENTS} clients; fewer calls reaching a dead dependency is better)"
    )
    return lines
