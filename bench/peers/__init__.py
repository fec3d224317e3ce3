"""``python -m bench peers``: this project's patterns against the libraries a Django user
would pick instead, each on the same endpoint, Postgres and Redis, in one run.

Sections: idempotency keys, rate limiting, circuit breakers, retries (docs/comparison.md
explains every row). Options (``python -m bench peers --long``, or
``python -m bench.peers --help``) lengthen the runs; the default takes a few minutes.
"""

from __future__ import annotations

import argparse
import time
from importlib.metadata import version

PEERS = [
    "Django", "djangorestframework", "drf-idempotency", "django-idempotency-key", "limits",
    "django-ratelimit", "pybreaker", "circuitbreaker", "aiobreaker", "purgatory",
    "tenacity", "stamina", "backoff", "redis",
]  # fmt: skip
NOT_RUN = [
    (
        "slowapi: a Starlette/FastAPI extension, not installable into a Django view; its"
        " engine `limits` is compared directly, used as slowapi uses it (hit per request)."
    ),
    (
        "aiobreaker and purgatory are asyncio-first: their synchronous APIs run here, under"
        " the same threads as the others."
    ),
]
SECTIONS = ["idempotency", "ratelimit", "breakers", "retries"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench peers", description=__doc__)
    parser.add_argument("--long", action="store_true", help="longer runs (about 3x)")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run one section")
    parser.add_argument("--breaker-dead-s", type=float, default=10.0)
    parser.add_argument("--breaker-reset-s", type=float, default=2.0)
    parser.add_argument("--idempotency-rounds", type=int, default=150)
    parser.add_argument("--ratelimit-accuracy-s", type=float, default=5.0)
    parser.add_argument("--ratelimit-throughput-s", type=float, default=1.0)
    parser.add_argument("--retry-clients", type=int, default=1000)
    options = parser.parse_args(argv)
    if options.long:
        options.breaker_dead_s *= 3
        options.idempotency_rounds *= 3
        options.ratelimit_accuracy_s *= 3
        options.ratelimit_throughput_s *= 3
    return options


def main(argv: list[str] | None = None) -> None:
    from bench.peers import breakers, idempotency, ratelimit, retries
    from bench.support import setup_django

    options = parse(argv or [])
    setup_django()
    print("versions: " + ", ".join(f"{name}=={version(name)}" for name in PEERS))
    for line in NOT_RUN:
        print(f"not run as such: {line}")
    chosen = options.only or SECTIONS
    sections = {
        "idempotency": (
            "Idempotency keys (same order-creating DRF view, gunicorn 2 x 12 threads)",
            lambda: idempotency.report(idempotency.run(rounds=options.idempotency_rounds)),
        ),
        "ratelimit": (
            "Rate limiting (same trivial view, two gunicorn processes sharing one Redis)",
            lambda: ratelimit.report(
                ratelimit.run(
                    accuracy_s=options.ratelimit_accuracy_s,
                    throughput_s=options.ratelimit_throughput_s,
                ),
                accuracy_s=options.ratelimit_accuracy_s,
            ),
        ),
        "breakers": (
            "Circuit breakers (same HTTP call to a loopback dependency)",
            lambda: breakers.report(
                breakers.run(dead_s=options.breaker_dead_s, reset_s=options.breaker_reset_s),
                dead_s=options.breaker_dead_s,
                reset_s=options.breaker_reset_s,
            ),
        ),
        "retries": (
            "Retries (a dependency answering 503 to everything)",
            lambda: [
                *retries.report(retries.run(clients=options.retry_clients)),
                f"(histogram: {retries.PNG.relative_to(retries.ROOT)})",
            ],
        ),
    }
    for name in chosen:
        title, section = sections[name]
        started = time.perf_counter()
        print(f"\n--- {title} ---", flush=True)
        for line in section():
            print(line, flush=True)
        print(f"({name} took {time.perf_counter() - started:.0f} s)", flush=True)
