"""Payments' healthy latency, measured the way the service calls it: the budget's base.

The request-path budget for payments (``PAYMENTS_REQUEST_BUDGET_S``) is derived from the
p99 of one healthy authorisation (``PAYMENTS_HEALTHY_P99_S``) times a headroom
(``PAYMENTS_BUDGET_HEADROOM``), so it is a measured number, not a round one. This
benchmark measures that p99: the payments simulator in its own process, called through
the service's resilient client (one attempt, no budget: the background's view) by as
many threads as a web process lets call payments at once (its bulkhead), for a few
seconds. It prints the percentiles, the budget the current
settings derive, and the budget the measurement would derive.

Against a real provider, measure the same way from its dashboards or from the
``resilience_dependency_call_seconds{dependency="payments",outcome="ok"}`` histogram.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.request import urlopen

DURATION_S = 5.0


def _call_until(stop_at: float, samples: list[float], lock: threading.Lock) -> None:
    from resilience.http import client

    payments = client("payments")
    mine: list[float] = []
    while time.monotonic() < stop_at:
        started = time.perf_counter()
        payments.request(
            "POST",
            "/authorizations",
            json={"order_id": str(uuid.uuid4()), "amount": 1999, "currency": "EUR"},
            idempotency_key=f"bench-{uuid.uuid4()}",
            retry=False,
        )
        mine.append(time.perf_counter() - started)
    with lock:
        samples.extend(mine)


def measure(base_url: str, *, threads: int, duration_s: float) -> list[float]:
    """Latencies of healthy authorisations from ``threads`` concurrent callers."""
    from django.test import override_settings

    from bench.support import payments_at
    from resilience.registry import reset_all

    samples: list[float] = []
    lock = threading.Lock()
    with override_settings(RESILIENCE=payments_at(base_url)):
        reset_all()
        stop_at = time.monotonic() + duration_s
        with ThreadPoolExecutor(threads) as pool:
            for future in [
                pool.submit(_call_until, stop_at, samples, lock) for _ in range(threads)
            ]:
                future.result()
    reset_all()
    return sorted(samples)


def main() -> None:
    from bench.support import quantile, setup_django

    setup_django()
    from django.conf import settings

    from resilience.policies import get_policy
    from tests.processes import VENV_BIN, child_environment, free_port, running, wait_for

    api_port, control_port = free_port(), free_port()
    command = [
        str(VENV_BIN / "python"),
        "-m",
        "chaos.payments",
        "--host",
        "127.0.0.1",
        "--port",
        str(api_port),
        "--control-port",
        str(control_port),
    ]

    def up() -> bool:
        try:
            with urlopen(f"http://127.0.0.1:{control_port}/healthz", timeout=1):
                return True
        except OSError:
            return False

    with (
        tempfile.TemporaryDirectory() as tmp,
        running(command, env=child_environment(), log_path=Path(tmp) / "payments.log"),
    ):
        wait_for(up, timeout=15, what="payments simulator")
        threads = get_policy("payments").bulkhead.max_concurrent
        ordered = measure(f"http://127.0.0.1:{api_port}", threads=threads, duration_s=DURATION_S)
    p50, p99, p999 = (quantile(ordered, q) for q in (0.5, 0.99, 0.999))
    headroom = settings.PAYMENTS_BUDGET_HEADROOM
    print(
        f"healthy payments authorisation, {threads} threads x {DURATION_S:g} s:"
        f" n={len(ordered)} p50={p50 * 1000:.1f} ms p99={p99 * 1000:.1f} ms"
        f" p99.9={p999 * 1000:.1f} ms"
    )
    print(
        f"shipped: PAYMENTS_HEALTHY_P99_S={settings.PAYMENTS_HEALTHY_P99_S}"
        f" x PAYMENTS_BUDGET_HEADROOM={headroom:g}"
        f" -> PAYMENTS_REQUEST_BUDGET_S={settings.PAYMENTS_REQUEST_BUDGET_S}"
    )
    print(f"this run would derive: {p99:.3f} x {headroom:g} = {p99 * headroom:.3f} s")


if __name__ == "__main__":
    sys.exit(main())
