"""Overload: goodput and latency per priority class at 1x, 2x and 3x capacity (adr/0010).

One gunicorn (the shipped ``WEB_WORKERS`` x ``WEB_THREADS``, payments simulator in its own
process) per configuration: load shedding as shipped (adaptive limit: Envoy's gradient
against a measured minRTT, gunicorn's FIFO thread queue), the same with an adaptive LIFO
thread queue, the same with Netflix's Gradient2, a static limit (= threads)
and no shedding at all. The load is open loop (requests leave on schedule
whatever the server does; latency counts from the scheduled time, so a queue is never
hidden), bounded in count and time, from ``USERS`` accounts each behind its own
forwarded address (the bench plays the gateway: ``X-Forwarded-For`` from a trusted proxy,
``X-Request-Start`` as nginx sets it), so per-client rate limits do not shape it. Mix:

* critical: ``POST /api/v1/orders`` (idempotency key) and ``GET /api/v1/orders/<id>``;
* normal: ``GET /api/v1/orders``;
* best effort: ``GET /api/v1/orders/report``.

Capacity is measured first (closed loop, no shedding): answers per second of the mix.
Goodput is successful answers per second that arrived within ``GOODPUT_DEADLINE_S`` of
the moment they were due (a later one is "late": its user has given up).
Then each configuration runs 1x, 2x and 3x of it, and the adaptive one is watched while
the load drops back to 1x: how long the limit takes to recover, and how much it moves
at steady load. Last, the cost of the middleware on an unloaded request and of a shed
answer, beside the rate limiter's cost, in process.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

USERS = 300
PHASE_S = 12.0
CAPACITY_S = 6.0
RECOVERY_S = 20.0
SENDERS = 192
MAX_REQUESTS = 40_000
TIMEOUT_S = 10.0
# Goodput counts answers a user still waits for: a success later than this (from the
# moment the request was due) is counted as late, not as goodput.
GOODPUT_DEADLINE_S = 2.0
# Every configuration by default; BENCH_OVERLOAD_MODES=adaptive,adaptive-lifo,adaptive,...
# runs only those, in that order (an interleaved A/B against one measured capacity).
ALL_MODES = ("adaptive", "adaptive-lifo", "gradient2", "static", "off")
MODES = tuple(os.environ.get("BENCH_OVERLOAD_MODES", ",".join(ALL_MODES)).split(","))
CLASSES = ("critical", "normal", "best_effort")
MIX = (  # (weight, class, kind)
    (0.15, "critical", "create"),
    (0.15, "critical", "detail"),
    (0.40, "normal", "list"),
    (0.30, "best_effort", "report"),
)
ORDER = {"currency": "EUR", "items": [{"sku": "bench-overload", "quantity": 1, "unit_price": 990}]}


@dataclass
class Client:
    token: str
    address: str
    order_id: str


@dataclass
class Phase:
    label: str
    offered_rps: float
    duration_s: float
    answers: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    undocumented: int = 0
    not_sent: int = 0

    def record(self, cls: str, latency: float, answer: tuple) -> None:
        """One answer: served in time, served late, shed (documented or not), or other."""
        status, payload, retry_after, content_type = answer
        if status in (200, 201) and latency <= GOODPUT_DEADLINE_S:
            self.answers[cls]["ok"] += 1
            self.latencies[cls].append(latency)
        elif status in (200, 201):
            self.answers[cls]["late"] += 1
        elif status == 503 and b'"overloaded"' in payload:
            self.answers[cls]["shed"] += 1
            if not retry_after or content_type != "application/problem+json":
                self.undocumented += 1
        else:
            self.answers[cls][f"other {status}"] += 1
            if status == 0 or (status >= 500 and "problem" not in content_type):
                self.undocumented += 1

    def goodput(self, cls: str) -> float:
        return self.answers[cls]["ok"] / self.duration_s

    def p(self, cls: str, q: float) -> float:
        from bench.support import quantile

        return quantile(self.latencies[cls], q, empty=0.0) * 1000


def make_clients(count: int) -> list[Client]:
    """Users with tokens and one order each, straight in the bench database."""
    from rest_framework.authtoken.models import Token

    from accounts.models import User
    from orders.models import Order

    clients = []
    for i in range(count):
        email = f"bench-overload-{i}@example.com"
        user = User.objects.filter(email=email).first() or User.objects.create_user(
            email=email, password=None
        )
        order = Order.objects.filter(owner=user).first() or Order.objects.create(
            owner=user, currency="EUR", total_amount=990
        )
        token, _ = Token.objects.get_or_create(user=user)
        clients.append(Client(token.key, f"10.{i // 250}.{i % 250}.7", str(order.id)))
    return clients


def pick(rng: random.Random) -> tuple[str, str]:
    roll, acc = rng.random(), 0.0
    for weight, cls, kind in MIX:
        acc += weight
        if roll < acc:
            return cls, kind
    return MIX[-1][1], MIX[-1][2]


def request_for(kind: str, client: Client) -> tuple[str, str, bytes | None, dict[str, str]]:
    headers = {
        "Authorization": f"Token {client.token}",
        "X-Forwarded-For": client.address,
        "Accept": "application/json",
    }
    if kind == "create":
        headers["Idempotency-Key"] = str(uuid.uuid4())
        headers["Content-Type"] = "application/json"
        return "POST", "/api/v1/orders", json.dumps(ORDER).encode(), headers
    if kind == "detail":
        return "GET", f"/api/v1/orders/{client.order_id}", None, headers
    if kind == "report":
        return "GET", "/api/v1/orders/report", None, headers
    return "GET", "/api/v1/orders?page_size=20", None, headers


def send_phase(port: int, clients: list[Client], phase: Phase, *, seed: int) -> None:
    """Open loop at ``phase.offered_rps`` for ``phase.duration_s`` (bounded)."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible mix, not crypto
    jobs: queue.Queue = queue.Queue(maxsize=SENDERS * 8)
    lock = threading.Lock()
    total = min(MAX_REQUESTS, int(phase.offered_rps * phase.duration_s))

    def sender() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
        while True:
            job = jobs.get()
            if job is None:
                break
            scheduled, cls, kind, client = job
            method, path, body, headers = request_for(kind, client)
            headers["X-Request-Start"] = f"t={time.time():.3f}"
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                status = response.status
                retry_after = response.getheader("Retry-After")
                content_type = response.getheader("Content-Type") or ""
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
                status, payload, retry_after, content_type = 0, b"", None, ""
            latency = time.monotonic() - scheduled
            with lock:
                phase.record(cls, latency, (status, payload, retry_after, content_type))
        connection.close()

    senders = [threading.Thread(target=sender, daemon=True) for _ in range(SENDERS)]
    for thread in senders:
        thread.start()
    started = time.monotonic()
    for n in range(total):
        due = started + n / phase.offered_rps
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        cls, kind = pick(rng)
        try:
            jobs.put_nowait((due, cls, kind, rng.choice(clients)))
        except queue.Full:
            phase.not_sent += 1  # the client side is saturated: counted, never hidden
    for _ in senders:
        jobs.put(None)
    for thread in senders:
        thread.join(TIMEOUT_S + 5)


def capacity(port: int, clients: list[Client]) -> float:
    """Answers per second of the mix, closed loop, with twice as many clients as threads."""
    from django.conf import settings

    rng = random.Random(7)  # noqa: S311
    done = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + CAPACITY_S

    def loop() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
        while time.monotonic() < stop_at:
            _, kind = pick(rng)
            method, path, body, headers = request_for(kind, rng.choice(clients))
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
                continue
            if response.status in (200, 201):
                with lock:
                    done[0] += 1
        connection.close()

    threads = [
        threading.Thread(target=loop, daemon=True)
        for _ in range(2 * settings.WEB_WORKERS * settings.WEB_THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CAPACITY_S + TIMEOUT_S)
    return done[0] / CAPACITY_S


def scrape_limit(port: int) -> float | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()
    for line in text.splitlines():
        if line.startswith("resilience_concurrency_limit "):
            return float(line.split()[1])
    return None


def server(mode: str, payments_url: str, workdir: Path, *, name: str | None = None):
    from tests.processes import GUNICORN_COMMAND, child_environment, free_port, running

    name = name or mode
    port = free_port()
    metrics_dir = workdir / f"prom-{name}"
    metrics_dir.mkdir()
    env = child_environment(
        WEB_PORT=str(port),
        PAYMENTS_URL=payments_url,
        RATELIMIT_TRUSTED_PROXIES="127.0.0.1/32",  # the bench is the gateway
        RATELIMIT_KEY_PREFIX=f"bench-overload-{uuid.uuid4().hex}",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        CONCURRENCY_LIMIT_ENABLED="false" if mode == "off" else "true",
        CONCURRENCY_LIMIT_MODE="static" if mode == "static" else "adaptive",
        # "adaptive" is the shipped algorithm (Envoy's minRTT gradient); Netflix's Gradient2
        # runs beside it for comparison (adr/0010).
        CONCURRENCY_LIMIT_ALGORITHM="gradient2" if mode == "gradient2" else "gradient",
        # gunicorn's FIFO thread queue as shipped, or adaptive LIFO beside it (adr/0010).
        CONCURRENCY_THREAD_QUEUE="adaptive_lifo" if mode == "adaptive-lifo" else "fifo",
    )
    return port, running(GUNICORN_COMMAND, env=env, log_path=workdir / f"web-{name}.log")


def run_mode(mode, payments_url, clients, workdir, rate, *, name=None) -> tuple[list[Phase], dict]:
    from tests.processes import http_request, wait_for

    port, context = server(mode, payments_url, workdir, name=name)
    phases, recovery = [], {}
    with context:
        wait_for(lambda: http_request("GET", f"http://127.0.0.1:{port}/healthz").status == 200,
                 timeout=30, what="gunicorn")  # fmt: skip
        for factor in (1, 2, 3):
            phase = Phase(f"{mode} {factor}x", rate * factor, PHASE_S)
            send_phase(port, clients, phase, seed=factor)
            phases.append(phase)
        if mode == "adaptive":
            recovery = watch_recovery(port, clients, rate)
    return phases, recovery


def watch_recovery(port: int, clients: list[Client], rate: float) -> dict:
    """3x, then back to 1x: seconds until the limit is back, and its spread at 1x."""
    overload = Phase("3x before recovery", rate * 3, PHASE_S / 2)
    send_phase(port, clients, overload, seed=11)
    low = scrape_limit(port)
    samples: list[tuple[float, float]] = []
    steady = Phase("1x recovery", rate, RECOVERY_S)
    started = time.monotonic()
    sampler_stop = threading.Event()

    def sample() -> None:
        while not sampler_stop.wait(0.5):
            value = scrape_limit(port)
            if value is not None:
                samples.append((time.monotonic() - started, value))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    send_phase(port, clients, steady, seed=12)
    sampler_stop.set()
    sampler.join(5)
    tail = [v for t, v in samples if t >= RECOVERY_S / 2] or [0.0]
    settled = statistics.median(tail)
    back = next((t for t, v in samples if v >= 0.9 * settled), None)
    return {
        "limit_after_3x": low,
        "limit_at_1x_median": settled,
        "recovered_s": back,
        "spread_at_1x": (max(tail) - min(tail)) if len(tail) > 1 else 0.0,
    }


def _cpu_us(call, n: int = 3000, rounds: int = 5) -> float:
    """Median over rounds of CPU microseconds per ``call()`` (steady on a shared host)."""
    import gc

    per_round = []
    for _ in range(rounds):
        gc.collect()
        started = time.process_time()
        for _ in range(n):
            call()
        per_round.append((time.process_time() - started) / n * 1e6)
    return statistics.median(per_round)


def overhead() -> list[str]:
    """CPU per request of the limiter, of the rate limiter, of a shed and a served answer."""
    from django.http import HttpResponse
    from django.test import Client as DjangoClient
    from django.test import RequestFactory, override_settings

    from bench.ratelimit import bench_token
    from orders.apis import OrderListCreateApi
    from resilience import concurrency
    from resilience.concurrency import ConcurrencyLimitMiddleware
    from resilience.ratelimit.middleware import RateLimitMiddleware

    ok = HttpResponse(b"{}")
    view = OrderListCreateApi.as_view()
    factory = RequestFactory()
    middleware = ConcurrencyLimitMiddleware(lambda _request: ok)

    def through_limiter() -> None:
        request = factory.get("/api/v1/orders")
        if middleware.process_view(request, view) is None:
            middleware(request)

    def bare() -> None:
        factory.get("/api/v1/orders")

    from django.conf import settings as live

    on = {**live.RESILIENCE_CONCURRENCY, "enabled": True}  # the test settings may differ
    with override_settings(RESILIENCE_CONCURRENCY=on):
        concurrency.reset()
        limiter_us = _cpu_us(through_limiter) - _cpu_us(bare)
    flood = RateLimitMiddleware(lambda _request: ok)
    with override_settings(RATELIMIT_KEY_PREFIX=f"bench-ovl-{uuid.uuid4().hex}"):
        ratelimit_us = _cpu_us(lambda: flood(factory.get("/api/v1/orders")), n=1000) - _cpu_us(bare)
    shed_settings = {**on, "mode": "static", "static_limit": 1}
    with override_settings(RESILIENCE_CONCURRENCY=shed_settings):
        concurrency.reset()
        concurrency.limiter().try_acquire("critical")  # the one slot, held here
        assert middleware.process_view(factory.get("/api/v1/orders"), view).status_code == 503
        shed_us = _cpu_us(lambda: middleware.process_view(factory.get("/api/v1/orders"), view))
    concurrency.reset()
    token = bench_token()
    client = DjangoClient(HTTP_AUTHORIZATION=f"Token {token}")
    rl_off = {**live.RESILIENCE_RATELIMIT, "enabled": False}
    with override_settings(RESILIENCE_RATELIMIT=rl_off):
        served_us = _cpu_us(lambda: client.get("/api/v1/orders?page_size=20"), n=200)
    costs = (
        f"CPU per request: concurrency limiter (admit + release) {limiter_us:.1f} us;"
        f" rate limiter flood check + RateLimit fields {ratelimit_us:.1f} us (Redis round trip"
        " included)"
    )
    shedding = (
        f"a shed answer (503 overloaded, problem+json) {shed_us:.0f} us of CPU vs a served"
        f" GET /api/v1/orders {served_us:.0f} us ({served_us / shed_us:.0f}x cheaper)"
    )
    return [costs, shedding]


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def report(mode_phases: dict[str, list[Phase]], rate: float) -> list[str]:
    header = (
        "config     load  | critical goodput/s p50 p99 ms | normal goodput/s p50 p99 |"
        " best-effort goodput/s p50 p99 | shed (c/n/b) | undocumented"
    )
    lines = [header]
    for phases in mode_phases.values():
        for phase in phases:
            cells = [f"{phase.label:<14}"]
            for cls in CLASSES:
                cells.append(
                    f"{phase.goodput(cls):6.1f} {phase.p(cls, 0.5):6.0f} {phase.p(cls, 0.99):6.0f}"
                )
            shed = "/".join(str(phase.answers[c]["shed"]) for c in CLASSES)
            cells.append(f"{shed:>12}")
            cells.append(f"{phase.undocumented} (+{phase.not_sent} not sent)")
            lines.append(" | ".join(cells))
    for mode, phases in mode_phases.items():
        if mode.split(" #")[0] == "off":
            continue
        one, three = phases[0], phases[2]
        ratio = three.goodput("critical") / max(one.goodput("critical"), 1e-9)
        p99_ratio = three.p("critical", 0.99) / max(one.p("critical", 0.99), 1e-9)
        lines.append(
            f"{mode}: critical goodput at 3x = {ratio:.0%} of 1x (target >= 90%);"
            f" critical p99 at 3x = {p99_ratio:.1f}x its 1x p99 (target <= 3x)"
        )
    off = mode_phases.get("off")
    if off:
        ratio = off[2].goodput("critical") / max(off[0].goodput("critical"), 1e-9)
        lines.append(
            f"no shedding: critical goodput at 3x = {ratio:.0%} of 1x; critical p99"
            f" {off[0].p('critical', 0.99):.0f} -> {off[2].p('critical', 0.99):.0f} ms"
        )
    return lines


def main() -> None:
    import logging

    from bench.support import setup_django

    setup_django()
    logging.getLogger("django.request").setLevel(logging.CRITICAL)  # shed answers log errors
    from django.conf import settings

    from tests.processes import VENV_BIN, child_environment, free_port, running, wait_for

    clients = make_clients(USERS)
    api_port, control_port = free_port(), free_port()
    payments_command = [
        str(VENV_BIN / "python"), "-m", "chaos.payments", "--host", "127.0.0.1",
        "--port", str(api_port), "--control-port", str(control_port),
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        workdir = Path(tmp)
        with running(payments_command, env=child_environment(), log_path=workdir / "pay.log"):
            from tests.processes import http_request

            wait_for(
                lambda: (
                    http_request("GET", f"http://127.0.0.1:{control_port}/healthz").status == 200
                ),
                timeout=15,
                what="payments",
            )
            payments_url = f"http://127.0.0.1:{api_port}"
            port, context = server("off", payments_url, workdir, name="capacity")
            with context:
                wait_for(
                    lambda: http_request("GET", f"http://127.0.0.1:{port}/healthz").status == 200,
                    timeout=30,
                    what="gunicorn",
                )
                rate = capacity(port, clients)
            print(
                f"capacity of the mix (closed loop, {settings.WEB_WORKERS} x"
                f" {settings.WEB_THREADS} threads, no shedding): {rate:.0f} answers/s;"
                f" phases of {PHASE_S:g} s at 1x, 2x, 3x; {USERS} clients",
                flush=True,
            )
            mode_phases, recovery = {}, {}
            for run, mode in enumerate(MODES, start=1):
                # A mode run twice (an interleaved A/B) keeps both: "adaptive #3".
                label = mode if MODES.count(mode) == 1 else f"{mode} #{run}"
                phases, found = run_mode(
                    mode, payments_url, clients, workdir, rate, name=f"{mode}-{run}"
                )
                mode_phases[label] = phases
                recovery = recovery or found
                for line in report({label: phases}, rate)[1:]:
                    print(line, flush=True)
    print("\n".join(report(mode_phases, rate)))
    if recovery:
        print(
            f"recovery: limit {recovery['limit_after_3x']} after 3x; back to 90% of its 1x"
            f" median ({recovery['limit_at_1x_median']:.0f}) after"
            f" {_seconds(recovery['recovered_s'])}; spread at steady 1x"
            f" {recovery['spread_at_1x']:.1f} (the minRTT pin included)"
        )
    for line in overhead():
        print(line)


if __name__ == "__main__":
    sys.exit(main())
