"""Run every benchmark in turn: ``python -m bench [name ...]``.

Each module in ``BENCHMARKS`` has a ``main()`` that prints its figures. Add yours here.
Options (``--long``, ``--only retries``...) go to ``bench.peers``, the peer comparison.
"""

from __future__ import annotations

import importlib
import sys
import time

BENCHMARKS = [
    "bench.breaker_concurrency",
    "bench.payments_latency",
    "bench.payments_budget",
    "bench.orders_idempotency",
    "bench.overload",
    "bench.ratelimit",
    "bench.ratelimit_cluster",
    "bench.slow_payments",
    "bench.webhooks_bulkhead",
    "bench.worker_model",
    "bench.peers",
]


def main(argv: list[str]) -> int:
    from chaos.scenarios.stack import stop_stacks_on_sigterm

    stop_stacks_on_sigterm()  # a killed bench stops the stacks it started
    names = [arg for arg in argv if not arg.startswith("-")]
    options = [arg for arg in argv if arg.startswith("-")]  # for bench.peers (--long...)
    selected = [b for b in BENCHMARKS if not names or b.rsplit(".", 1)[-1] in names]
    failures = 0
    for name in selected:
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        try:
            module = importlib.import_module(name)
            module.main(options) if name == "bench.peers" else module.main()
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            failures += 1
            print(f"{name} failed: {type(exc).__name__}: {exc}", flush=True)
        print(f"({name} took {time.perf_counter() - started:.1f} s)", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
