"""Concurrent calls through one breaker: plain pybreaker 1.4 versus ``resilience.Breaker``.

pybreaker holds its lock during the protected call, so N threads making a call of T
seconds take N x T. Ours decides and records under the lock, never around the call.
"""

from __future__ import annotations

import threading
import time

import pybreaker

THREADS = 16
CALL_S = 0.1


def run(breaker: pybreaker.CircuitBreaker) -> float:
    barrier = threading.Barrier(THREADS)

    def call() -> None:
        barrier.wait()
        breaker.call(time.sleep, CALL_S)

    threads = [threading.Thread(target=call) for _ in range(THREADS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def main() -> None:
    from bench.support import setup_django

    setup_django()
    from resilience.breakers import Breaker
    from resilience.policies import BreakerPolicy

    plain = run(pybreaker.CircuitBreaker(fail_max=5))
    ours = run(Breaker("bench", BreakerPolicy(window="consecutive", fail_max=5)))
    print(f"{THREADS} threads x {CALL_S * 1000:.0f} ms call through one breaker")
    print(f"  pybreaker 1.4 CircuitBreaker: {plain:.2f} s")
    print(f"  resilience Breaker:           {ours:.2f} s  ({plain / ours:.1f}x faster)")
