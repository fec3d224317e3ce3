"""Bulkhead proof: a flood of slow webhook deliveries must not slow ``GET /api/v1/orders``.

Real processes: gunicorn (the shipped `WEB_WORKERS` x `WEB_THREADS`), a Celery worker
consuming only ``webhooks`` (prefork, 4 processes, ``background`` pool; at most 2
deliveries to the one slow receiver at a time, its host's bulkhead), the reference
receiver in this process answering every delivery after ``RECEIVER_LATENCY_S``, Postgres
and Redis.

The traffic: ``PINGS_PER_S`` pings per second through the API (open loop, every ping
queues one delivery), while one client measures ``GET /api/v1/orders`` back to back.
Three windows per configuration:

1. idle: no pings;
2. no flood: the pings, the receiver answering at once (the queue stays empty);
3. flood: the same pings, the receiver answering after ``RECEIVER_LATENCY_S``: far
   more delivery work than the webhooks worker can do, so the queue grows all along.

Windows 2 and 3 differ only by the slow deliveries, so their ratio is the harm the
flood does; window 1 also shows what the pings cost the web themselves (on a small
machine their own CPU moves the p99, whatever happens to their deliveries).

Two configurations, same offered load:

* bulkheads on (the design): deliveries run on their own queue, worker and database
  pool. Criterion: p99 under the flood is at most 1.2 x p99 without it (window 3 / 2).
* bulkheads off: deliveries run in the pool that serves requests, as they do when a
  web app sends webhooks itself after commit (``CELERY_TASK_ALWAYS_EAGER``: no queue,
  no worker, the request thread and its database pool do the delivery). A worker
  consuming both queues with one database pool would share nothing with gunicorn and
  show nothing here; what the queue-and-pool bulkhead isolates the request path from is
  exactly this.

Run: ``make bench`` or ``python -m bench webhooks_bulkhead`` (about 90 s).
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

from config.worker_model import WEB_THREADS, WEB_WORKERS, WORKER_WEBHOOKS_CONCURRENCY

RECEIVER_LATENCY_S = 3.0
PINGS_PER_S = 4.0
WINDOW_S = 12.0
WARMUP_S = 3.0
ENDPOINTS = 4
CRITERION = 1.2


def _get(url: str, token: str, timeout: float = 30.0) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Token {token}"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _post(url: str, token: str, timeout: float = 15.0) -> int:
    request = urllib.request.Request(  # noqa: S310 - loopback URL of our own gunicorn
        url, data=b"", method="POST", headers={"Authorization": f"Token {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def measure(call: Callable[[], int], seconds: float) -> list[float]:
    """Latencies of back-to-back calls for ``seconds`` (failures count as their time)."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


@contextmanager
def flood(ping: Callable[[str], int], endpoint_ids: list[str]):
    """Open-loop pings at ``PINGS_PER_S`` until the block ends (in-flight ones finish)."""
    stop = threading.Event()
    statuses: list[int] = []
    pool = ThreadPoolExecutor(max_workers=64)

    def run() -> None:
        targets = itertools.cycle(endpoint_ids)
        started = time.monotonic()
        for n in itertools.count():
            if stop.wait(max(0.0, started + n / PINGS_PER_S - time.monotonic())):
                return
            endpoint_id = next(targets)
            pool.submit(lambda e=endpoint_id: statuses.append(ping(e)))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join()
        pool.shutdown(wait=True)


def wait_healthy(base: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _get(f"{base}/healthz", "", timeout=2) == 200:
            return
        time.sleep(0.2)
    raise RuntimeError("gunicorn did not become ready")


def run_mode(
    *, bulkheads: bool, token: str, endpoint_ids: list[str], workdir: Path, receiver
) -> dict:
    from bench.support import timing
    from config.celery import app
    from tests.processes import child_environment, free_port, running

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    common = {
        "RATELIMIT_ENABLED": "false",
        "WEBHOOKS_PING_RATE": "1000000/h",
        "WEB_WORKERS": "2",
        "WEB_PORT": str(port),
        "WEBHOOK_READ_TIMEOUT_S": str(RECEIVER_LATENCY_S + 5),
    }
    if not bulkheads:
        common["DJANGO_SETTINGS_MODULE"] = "bench.settings_no_bulkheads"
    app.control.purge()
    with ExitStack() as stack:
        gunicorn = [sys.executable, "-m", "gunicorn", "config.wsgi:application"]
        gunicorn += ["-c", "config/gunicorn.py"]
        tag = "on" if bulkheads else "off"
        stack.enter_context(
            running(gunicorn, env=child_environment(**common), log_path=workdir / f"web-{tag}.log")
        )
        if bulkheads:
            worker = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "webhooks"]
            worker += ["--pool", "prefork", "--concurrency", "4", "--loglevel", "WARNING"]
            worker += ["--without-heartbeat", "--without-gossip", "--without-mingle"]
            worker += ["-n", f"bench-webhooks-{port}@%h"]
            stack.enter_context(
                running(worker, env=child_environment(**common), log_path=workdir / "worker.log")
            )
        wait_healthy(base)

        def get_orders() -> int:
            return _get(f"{base}/api/v1/orders", token)

        def ping(endpoint_id: str) -> int:
            return _post(f"{base}/api/v1/webhooks/endpoints/{endpoint_id}/ping", token)

        measure(get_orders, WARMUP_S)
        idle = timing(measure(get_orders, WINDOW_S))
        receiver.set_faults(latency_ms=0)
        with flood(ping, endpoint_ids) as fast_pings:
            baseline = timing(measure(get_orders, WINDOW_S))
        receiver.set_faults(latency_ms=RECEIVER_LATENCY_S * 1000)
        with flood(ping, endpoint_ids) as statuses:
            flooded = timing(measure(get_orders, WINDOW_S))
    app.control.purge()
    return {
        "idle": idle,
        "baseline": baseline,
        "flooded": flooded,
        "pings": fast_pings + statuses,
    }


def main() -> None:
    from bench.support import setup_django

    setup_django()
    import tempfile

    from django.db import transaction
    from rest_framework.authtoken.models import Token

    from accounts.models import User
    from chaos.receiver import ReceiverService
    from orders.models import Order
    from webhooks.models import Delivery
    from webhooks.services import endpoint_create

    user = User.objects.create_user(
        email=f"bench-webhooks-{time.time_ns()}@example.com", password="x" * 16
    )
    token = Token.objects.create(user=user).key
    Order.objects.bulk_create(
        Order(owner=user, currency="EUR", total_amount=100 * i) for i in range(20)
    )
    with ReceiverService() as receiver, tempfile.TemporaryDirectory() as workdir:
        endpoint_ids = []
        with transaction.atomic():
            for n in range(ENDPOINTS):
                endpoint = endpoint_create(
                    owner=user, url=f"{receiver.api_url}/hooks/{n}", event_types=["order.paid"]
                )
                receiver.set_secret(f"/hooks/{n}", endpoint.secret)
                endpoint_ids.append(str(endpoint.id))
        results = {}
        for bulkheads in (True, False):
            results[bulkheads] = run_mode(
                bulkheads=bulkheads,
                token=token,
                endpoint_ids=endpoint_ids,
                workdir=Path(workdir),
                receiver=receiver,
            )
        received = receiver.stats()
    # Leave nothing due for a later `make run` on the bench database.
    Delivery.objects.filter(endpoint__owner=user, status="pending").update(status="failed")

    print(
        f"{PINGS_PER_S:g} pings/s, windows of {WINDOW_S:g} s; flood: receiver answers in "
        f"{RECEIVER_LATENCY_S:g} s; gunicorn {WEB_WORKERS}x{WEB_THREADS} threads;"
        f" worker-webhooks prefork {WORKER_WEBHOOKS_CONCURRENCY}"
    )
    print(f"receiver: {json.dumps(received)}")
    verdicts = []
    for bulkheads, label in ((True, "bulkheads on "), (False, "bulkheads off")):
        r = results[bulkheads]
        idle, base, flooded = r["idle"], r["baseline"], r["flooded"]
        ratio50 = flooded.p50_ms / base.p50_ms
        ratio99 = flooded.p99_ms / base.p99_ms
        accepted = sum(1 for s in r["pings"] if s == 202)
        print(f"  {label}: GET /api/v1/orders idle           {idle}")
        print(f"  {label}: GET /api/v1/orders pings, no flood {base}")
        print(f"  {label}: GET /api/v1/orders pings, flood    {flooded}")
        print(
            f"  {label}: flood / no flood: p50 {ratio50:.2f}, p99 {ratio99:.2f};"
            f" flood / idle: p99 {flooded.p99_ms / idle.p99_ms:.2f};"
            f" pings accepted {accepted}/{len(r['pings'])}"
        )
        verdicts.append((bulkheads, ratio99))
    on_ratio = verdicts[0][1]
    verdict = "PASS" if on_ratio <= CRITERION else "FAIL"
    print(f"  criterion p99 ratio <= {CRITERION} with bulkheads on: {verdict} ({on_ratio:.2f})")
    if on_ratio > CRITERION:
        raise AssertionError(f"p99 ratio {on_ratio:.2f} above {CRITERION}")
