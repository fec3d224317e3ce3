"""Run every benchmark in turn: ``python -m bench [name ...]``.

Each module in ``BENCHMARKS`` has a ``main()`` that prints its figures. Add yours here.
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
    "bench.slow_payments",
    "bench.webhooks_bulkhead",
    "bench.worker_model",
]


def main(argv: list[str]) -> int:
    selected = [b for b in BENCHMARKS if not argv or b.rsplit(".", 1)[-1] in argv]
    failures = 0
    for name in selected:
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        try:
            importlib.import_module(name).main()
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            failures += 1
            print(f"{name} failed: {type(exc).__name__}: {exc}", flush=True)
        print(f"({name} took {time.perf_counter() - started:.1f} s)", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
