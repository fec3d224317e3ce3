"""The limiter on Redis Cluster beside one Redis: cost per decision and accuracy, one run.

Starts a redis-server and a Redis Cluster (3 masters + 3 replicas, the fleet's, from the
same binary) on free ports of 23000-23999, and drives the limiter's own store
(``RedisBucketStore``, the one EVALSHA per decision every request makes) on each:

1. cost: wall and CPU microseconds per decision, sequentially, for a one-policy
   decision (flood) and for the two-policy login decision (``login_ip`` and
   ``login_username`` in one script: one slot on the cluster, by their ``{login}`` tag);
2. accuracy under overload: ``THREADS`` threads drawing from one bucket (burst 100,
   100/s) for ``ACCURACY_S``: admitted against ``capacity + rate x seconds``.

Usage: ``python -m bench ratelimit_cluster`` (also in ``make bench``).
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench.support import setup_django

DECISIONS = 3000
THREADS = 8
ACCURACY_S = 3.0
CAPACITY = 100
RATE = 100.0


def _store(url: str):
    from resilience.ratelimit.config import RedisOptions
    from resilience.ratelimit.storage import RedisBucketStore, build_client

    options = RedisOptions(
        url=url, max_connections=16, pool_timeout_s=0.05, socket_timeout_s=0.25,
        connect_timeout_s=0.25,
    )  # fmt: skip
    return RedisBucketStore(build_client(options))


def cost(store, buckets_of) -> tuple[float, float]:
    """(wall us, CPU us) per decision, median of three rounds."""
    walls, cpus = [], []
    for _ in range(3):
        wall, cpu = time.perf_counter(), time.process_time()
        for index in range(DECISIONS):
            store.consume(buckets_of(index))
        walls.append((time.perf_counter() - wall) / DECISIONS * 1e6)
        cpus.append((time.process_time() - cpu) / DECISIONS * 1e6)
    return sorted(walls)[1], sorted(cpus)[1]


def accuracy(store) -> tuple[int, float, float]:
    from resilience.ratelimit.storage import Bucket

    bucket = [
        Bucket(key=f"rl:bench:{{{uuid.uuid4().hex}}}", capacity=CAPACITY, interval_s=1 / RATE)
    ]
    admitted, stamps = [0], []
    lock = threading.Lock()
    deadline = time.monotonic() + ACCURACY_S

    def draw() -> None:
        mine, times = 0, []
        while time.monotonic() < deadline:
            times.append(time.monotonic())
            allowed, _ = store.consume(bucket)
            mine += allowed
        with lock:
            admitted[0] += mine
            stamps.extend(times)

    threads = [threading.Thread(target=draw) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = max(stamps) - min(stamps)
    expected = CAPACITY + RATE * elapsed
    return admitted[0], expected, elapsed


def main() -> None:
    setup_django()
    from fleet.procs import free_port, spawn, wait_for
    from fleet.stack import Fleet, FleetSpec, _redis
    from resilience.ratelimit.storage import Bucket

    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        fleet = Fleet(FleetSpec(run_dir=Path(tmp)))
        single_port = free_port()
        single = spawn(
            "redis-single",
            ["redis-server", "--port", str(single_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            env={}, log_dir=Path(tmp),
        )  # fmt: skip
        try:
            wait_for(lambda: _redis(single_port).ping(), timeout=20, what="redis-server")
            fleet.start_redis_cluster()
            backends = {
                "one Redis": _store(f"redis://127.0.0.1:{single_port}/0"),
                "Redis Cluster 3+3": _store(fleet.redis_cluster_url),
            }
            run = uuid.uuid4().hex[:8]

            def flood(index: int) -> list:
                key = f"rl:flood:{{198.51.100.{index % 200}-{run}}}"
                return [Bucket(key=key, capacity=1e9, interval_s=1e-9)]

            def login(index: int) -> list:
                ip = f"rl:{{login}}:login_ip:198.51.100.{index % 200}-{run}"
                user = f"rl:{{login}}:login_username:{index % 500:032x}-{run}"
                return [
                    Bucket(key=ip, capacity=1e9, interval_s=1e-9),
                    Bucket(key=user, capacity=1e9, interval_s=1e-9),
                ]

            print(f"1. Cost per decision, {DECISIONS} sequential decisions (median of 3 rounds)")
            for name, store in backends.items():
                for label, buckets_of in (
                    ("1 policy (flood)", flood),
                    ("2 policies (login)", login),
                ):
                    for index in range(200):  # warm up connections and the script cache
                        store.consume(buckets_of(index))
                    wall, cpu = cost(store, buckets_of)
                    print(f"  {name:<18} {label:<20} {wall:7.0f} us wall {cpu:7.0f} us CPU")
            print(
                f"\n2. Accuracy under overload: burst {CAPACITY}, {RATE:.0f}/s, {THREADS} threads,"
                f" {ACCURACY_S:.0f} s"
            )
            for name, store in backends.items():
                admitted, expected, elapsed = accuracy(store)
                print(
                    f"  {name:<18} admitted {admitted} of expected {expected:.1f} in"
                    f" {elapsed:.2f} s ({(admitted - expected) / expected:+.2%})"
                )
        finally:
            fleet.stop()
            single.stop()


if __name__ == "__main__":
    main()
