"""Threads per web process: what more gthread threads cost and buy (adr/0007).

For each ``WEB_THREADS`` value, two gunicorn gthread processes (the shipped
``WEB_WORKERS``) serve ``GET /api/v1/orders`` to a closed-loop client of ``CONCURRENCY``
connections, twice: with payments healthy, and while ``SLOW_CALLS`` other connections
hold a request each on a slow dependency (a view that sleeps ``SLOW_S`` the way a thread
waits on a slow provider without a bulkhead). It prints reads per second, p50/p99, and
the resident memory of the web processes. The request path mostly waits on I/O, so
threads are cheap until they contend for the GIL; what they buy is room for slow calls
without starving the reads.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
from pathlib import Path

THREAD_COUNTS = (4, 8, 16, 32)
CONCURRENCY = 16
SLOW_CALLS = 12
SLOW_S = 0.8
DURATION_S = 8.0


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid``'s children (the gunicorn workers), in MB."""
    children = subprocess.run(
        ["ps", "-o", "rss=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    return sum(int(kb) for kb in children) / 1024


def slow_holders(base: str, stop: threading.Event) -> list[threading.Thread]:
    """``SLOW_CALLS`` clients each keeping one request parked on a slow call."""
    from chaos.scenarios.client import request

    def hold() -> None:
        while not stop.is_set():
            request("GET", f"{base}/bench/slow?seconds={SLOW_S}", timeout=10)

    holders = [threading.Thread(target=hold, daemon=True) for _ in range(SLOW_CALLS)]
    for holder in holders:
        holder.start()
    return holders


def main() -> None:
    from bench.support import setup_django

    setup_django()
    from django.conf import settings

    from bench.loadgen import run_load
    from bench.ratelimit import bench_token
    from tests.processes import GUNICORN_COMMAND, child_environment, free_port, running, wait_for

    token = bench_token()
    auth = {"Authorization": f"Token {token}"}
    print(
        f"{settings.WEB_WORKERS} gthread processes; {CONCURRENCY} readers of GET /api/v1/orders;"
        f" 'slow' = {SLOW_CALLS} more clients each parked {SLOW_S:g} s on a slow call"
    )
    print("threads | reads/s healthy | p50 / p99 ms | reads/s slow | p50 / p99 ms | RSS MB")
    for threads in THREAD_COUNTS:
        port = free_port()
        env = child_environment(
            WEB_PORT=str(port),
            WEB_THREADS=str(threads),
            RATELIMIT_ENABLED="false",
            # Threads alone: neither the rate limiter nor load shedding shapes the load.
            CONCURRENCY_LIMIT_ENABLED="false",
            DJANGO_SETTINGS_MODULE="bench.worker_model_settings",
        )
        with tempfile.TemporaryDirectory() as tmp:
            env["PROMETHEUS_MULTIPROC_DIR"] = tmp
            log = Path(tmp) / "web.log"
            # The sizing check refuses a payments bulkhead that 4 threads could not fill:
            # this bench measures threads alone, so it runs without that bulkhead.
            env["PAYMENTS_BULKHEAD_MAX"] = str(max(1, threads // 4))
            with running(GUNICORN_COMMAND, env=env, log_path=log) as server:
                base = f"http://127.0.0.1:{port}"
                from chaos.scenarios.client import request

                wait_for(
                    lambda base=base: request("GET", f"{base}/healthz", timeout=1).status == 200,
                    timeout=30,
                    what="gunicorn",
                )
                url = f"{base}/api/v1/orders?page_size=20"
                healthy = run_load(
                    url, concurrency=CONCURRENCY, duration_s=DURATION_S, headers=auth
                )
                stop = threading.Event()
                holders = slow_holders(base, stop)
                slow = run_load(url, concurrency=CONCURRENCY, duration_s=DURATION_S, headers=auth)
                stop.set()
                for holder in holders:
                    holder.join(SLOW_S + 11)
                memory = rss_mb(server.pid)
        cells = [
            f"{threads:>7}",
            f"{healthy.rps:>15.0f}",
            f"{healthy.percentile_ms(0.5):>5.0f} / {healthy.percentile_ms(0.99):<5.0f}",
            f"{slow.rps:>12.0f}",
            f"{slow.percentile_ms(0.5):>5.0f} / {slow.percentile_ms(0.99):<5.0f}",
            f"{memory:.0f}",
        ]
        print(" | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
