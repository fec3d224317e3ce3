"""Rate limiting: its cost in the app, django-ratelimit's, and nginx limit_req's, one run.

Starts one gunicorn server (2 workers x `WEB_THREADS`, the production shape) with the
benchmark endpoints of ``bench/ratelimit_urls.py`` and, when nginx is available, an
nginx on loopback with ``deploy/nginx/ratelimit.conf`` in front of it. Then measures:

1. requests/s and latency of the same trivial endpoint unlimited, behind our Redis token
   bucket, behind django-ratelimit's decorator and behind our business-rule wrapper of it
   (limits never reached: the cost of checking), and of a realistic endpoint (token
   authentication, one query) with and without the token bucket, interleaved over rounds;
2. the cost of crossing the gateway (the unlimited endpoint through nginx);
3. accuracy under overload: admitted requests against ``capacity + rate x seconds`` for
   the in-app bucket and for nginx limit_req shaped the same (burst 100, 100/s).

Usage: ``make bench`` or ``python -m bench ratelimit``. nginx comes from Debian's
``nginx`` package, installed with apt-get when missing; it runs under its own prefix in
a temporary directory and never touches the system's nginx configuration or service.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import LoadResult, run_load
from bench.support import BENCH_DATABASE_URL, BENCH_REDIS_URL
from chaos.commands import GUNICORN_COMMAND
from config.worker_model import WEB_THREADS
from tests.processes import free_port, http_request, running, wait_for

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "deploy" / "nginx" / "ratelimit.conf"
CONCURRENCY = 16
ROUND_S = 2.0
ROUNDS = 5
ACCURACY_S = 5.0
ACCURACY_CAPACITY = 100
ACCURACY_RATE = 100.0
READY_TIMEOUT_S = 30.0
TARGET_RATIO = 0.9
BENCH_ORDERS = 20  # one page of the order list


def wait_ready(url: str) -> None:
    wait_for(
        lambda: http_request("GET", url, timeout=2).status == 200,
        timeout=READY_TIMEOUT_S,
        interval=0.1,
        what=f"{url} to answer 200",
    )


def gunicorn(port: int, workdir: Path):
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "bench.ratelimit_settings",
            "DATABASE_URL": os.environ.get("DATABASE_URL", BENCH_DATABASE_URL),
            "REDIS_URL": os.environ.get("REDIS_URL", BENCH_REDIS_URL),
            "RATELIMIT_ENABLED": "true",  # whatever the caller's environment says
            "RATELIMIT_KEY_PREFIX": f"bench-{uuid.uuid4().hex}",
            "RATELIMIT_CACHE_PREFIX": f"bench-fw-{uuid.uuid4().hex}",
            "WEB_PORT": str(port),
            "WEB_WORKERS": "2",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return running(GUNICORN_COMMAND, env=env, log_path=workdir / "gunicorn.log")


def find_or_install_nginx() -> str | None:
    """The nginx binary, installing Debian's package if needed; None when impossible."""
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).exists():
            return candidate
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        print("nginx is not installed and cannot be installed here (needs apt-get as root)")
        return None
    print("installing Debian's nginx package (apt-get install -y nginx) ...", flush=True)
    environ = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    quiet = {"env": environ, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    installed = subprocess.run([apt, "install", "-y", "nginx"], check=False, **quiet)
    if installed.returncode != 0:
        subprocess.run([apt, "update"], check=False, **quiet)
        installed = subprocess.run([apt, "install", "-y", "nginx"], check=False, **quiet)
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if installed.returncode != 0 or not Path(binary).exists():
        print("nginx could not be installed; skipping the gateway comparison")
        return None
    return binary


def nginx(binary: str, *, listen: int, upstream: int, workdir: Path):
    """nginx on loopback with the repository's config, under its own prefix."""
    site = NGINX_CONF.read_text()
    site = site.replace("server web:8000;", f"server 127.0.0.1:{upstream};")
    site = site.replace("listen 8080;", f"listen 127.0.0.1:{listen};")
    (workdir / "ratelimit.conf").write_text(site)
    temp = {name: workdir / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    (workdir / "nginx.conf").write_text(
        f"""worker_processes 1;
error_log {workdir}/error.log warn;
pid {workdir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {workdir}/ratelimit.conf;
}}
"""
    )
    command = [binary, "-p", str(workdir), "-e", str(workdir / "error.log")]
    command += ["-c", str(workdir / "nginx.conf"), "-g", "daemon off;"]
    check = subprocess.run([*command, "-t"], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise RuntimeError(f"nginx -t failed: {check.stderr.strip()}")
    return running(command, env=os.environ, log_path=workdir / "nginx.log")


def load(url: str, seconds: float, headers: dict[str, str] | None = None) -> LoadResult:
    return run_load(url, concurrency=CONCURRENCY, duration_s=seconds, headers=headers)


def bench_token() -> str:
    """A token of the bench user, who owns ``BENCH_ORDERS`` orders (created if needed)."""
    from bench.support import setup_django

    setup_django()
    from rest_framework.authtoken.models import Token

    from accounts.models import User
    from orders.models import Order

    user = User.objects.filter(email="bench-ratelimit@example.com").first()
    if user is None:
        user = User.objects.create_user(email="bench-ratelimit@example.com", password=None)
    missing = BENCH_ORDERS - Order.objects.filter(owner=user).count()
    Order.objects.bulk_create(
        Order(owner=user, currency="EUR", total_amount=1000 + i) for i in range(max(0, missing))
    )
    Token.objects.filter(user=user).delete()
    return Token.objects.create(user=user).key


def line(label: str, result: LoadResult, baseline: float | None = None) -> str:
    ratio = f"  ratio {result.rps / baseline:.2f}" if baseline else ""
    return (
        f"  {label:<34} {result.rps:7.0f} req/s  p50 {result.percentile_ms(0.5):5.1f} ms"
        f"  p99 {result.percentile_ms(0.99):5.1f} ms{ratio}"
    )


def accuracy(label: str, result: LoadResult, capacity: float, rate: float) -> str:
    expected = capacity + rate * result.elapsed_s
    deviation = (result.allowed - expected) / expected * 100
    return (
        f"  {label:<34} admitted {result.allowed:5d} of {result.total:6d}"
        f" (expected {expected:6.1f}, {deviation:+5.1f}%)"
        f"  {result.rps:6.0f} req/s  p50 {result.percentile_ms(0.5):5.1f} ms"
        f"  p99 {result.percentile_ms(0.99):5.1f} ms"
    )


@dataclass(frozen=True)
class Group:
    """Endpoints compared with the first of them, and what the comparison stands for."""

    about: str
    paths: dict[str, str]
    authenticated: bool


TRIVIAL = Group(
    "worst case, a view that does nothing (the check is most of the request)",
    {
        "unlimited": "/bench/plain",
        "token bucket (Redis, 1 EVALSHA)": "/bench/token-bucket",
        "django-ratelimit decorator": "/bench/django-ratelimit",
        "business_ratelimit wrapper": "/bench/business-rule",
    },
    authenticated=False,
)
MINIMAL = Group(
    "the cheapest authenticated endpoint: every API view does at least this",
    {
        "unlimited (token auth + query)": "/bench/me",
        "token bucket (token auth + query)": "/bench/me-token-bucket",
    },
    authenticated=True,
)
ORDER_LIST = Group(
    f"a real endpoint: GET /api/v1/orders, {BENCH_ORDERS} orders on the page",
    {
        "unlimited (order list)": "/bench/orders?page_size=20",
        "token bucket (order list)": "/bench/orders-token-bucket?page_size=20",
    },
    authenticated=True,
)
GROUPS = (TRIVIAL, MINIMAL, ORDER_LIST)


def measure_overhead(base: str, token: str) -> dict[str, list[LoadResult]]:
    """Interleave the endpoints round by round so drift hits all of them alike."""
    auth = {"Authorization": f"Token {token}"}
    endpoints = {
        name: (f"{base}{path}", auth if group.authenticated else None)
        for group in GROUPS
        for name, path in group.paths.items()
    }
    for url, headers in endpoints.values():  # warm up workers, pools and caches
        load(url, 0.5, headers)
    results: dict[str, list[LoadResult]] = {name: [] for name in endpoints}
    for _ in range(ROUNDS):
        for name, (url, headers) in endpoints.items():
            results[name].append(load(url, ROUND_S, headers))
    return results


CPU_REQUESTS = 2000
CPU_ROUNDS = 3


def measure_cpu(token: str) -> dict[str, float]:
    """CPU microseconds per request, in this process through Django's test client.

    Throughput on a shared host moves with the neighbours' load; CPU time spent by one
    process on one request does much less, so this is the steadier cost figure.
    """
    import gc

    from django.test import Client, override_settings

    from bench import ratelimit_settings as layer

    config = {**layer.RESILIENCE_RATELIMIT, "key_prefix": f"bench-cpu-{uuid.uuid4().hex}"}
    overrides = override_settings(
        ROOT_URLCONF="bench.ratelimit_urls",
        RESILIENCE_RATELIMIT=config,
        ALLOWED_HOSTS=["testserver"],
        RATELIMIT_CACHE_PREFIX=f"bench-cpu-fw-{uuid.uuid4().hex}",
    )
    anonymous, authenticated = Client(), Client(HTTP_AUTHORIZATION=f"Token {token}")
    paths = {
        name: (authenticated if group.authenticated else anonymous, path)
        for group in GROUPS
        for name, path in group.paths.items()
    }
    samples: dict[str, list[float]] = {name: [] for name in paths}
    with overrides:
        for client, path in paths.values():
            for _ in range(200):  # warm up imports, pools, caches
                client.get(path)
        for _ in range(CPU_ROUNDS):
            for name, (client, path) in paths.items():
                gc.collect()
                started = time.process_time()
                for _ in range(CPU_REQUESTS):
                    client.get(path)
                samples[name].append((time.process_time() - started) / CPU_REQUESTS * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def median_result(results: list[LoadResult]) -> LoadResult:
    return sorted(results, key=lambda r: r.rps)[len(results) // 2]


def report_overhead(overhead: dict[str, list[LoadResult]]) -> None:
    for group in GROUPS:
        names = list(group.paths)
        baseline = median_result(overhead[names[0]]).rps
        for name in names:
            chosen = median_result(overhead[name])
            print(line(name, chosen, None if name == names[0] else baseline))
        ratio = median_result(overhead[names[1]]).rps / baseline
        verdict = "meets" if ratio >= TARGET_RATIO else "misses"
        print(f"  -> token bucket / unlimited = {ratio:.2f} ({verdict} the {TARGET_RATIO} aim;")
        print(f"     {group.about})")


def report_cpu(cpu: dict[str, float]) -> None:
    costs = []
    for group in GROUPS:
        names = list(group.paths)
        base_cpu = cpu[names[0]]
        for name in names:
            extra = "" if name == names[0] else f"  +{cpu[name] - base_cpu:4.0f} us"
            ratio = "" if name == names[0] else f"  ratio {base_cpu / cpu[name]:.2f}"
            print(f"  {name:<34} {cpu[name]:6.0f} us CPU{extra}{ratio}")
        costs.append(cpu[names[1]] - base_cpu)
    # The token bucket costs about the same whatever the endpoint does, so the ratio
    # depends only on how much the endpoint itself spends.
    cost = statistics.median(costs)
    break_even = cost * TARGET_RATIO / (1 - TARGET_RATIO)
    print(
        f"  -> the check costs about {cost:.0f} us of CPU per request: endpoints spending"
        f" {break_even:.0f} us or more keep {TARGET_RATIO} of their throughput"
    )


def compare_gateway(base: str, gateway: str | None) -> None:
    if gateway is not None:
        print("\n2. Cost of crossing the gateway (unlimited endpoint)")
        direct = load(f"{base}/bench/plain", ROUND_S)
        through = load(f"{gateway}/bench/plain", ROUND_S)
        print(line("direct to gunicorn", direct))
        print(line("through nginx (proxy, keep-alive)", through, direct.rps))
        extra = through.percentile_ms(0.5) - direct.percentile_ms(0.5)
        print(f"  added p50 latency: {extra:+.2f} ms")
    print(
        f"\n3. Accuracy under overload: burst {ACCURACY_CAPACITY}, {ACCURACY_RATE:.0f}/s,"
        f" one client IP, {ACCURACY_S:.0f} s"
    )
    in_app = load(f"{base}/api/bench/accuracy", ACCURACY_S)
    print(accuracy("in-app token bucket (Redis)", in_app, ACCURACY_CAPACITY, ACCURACY_RATE))
    if gateway is None:
        print("  nginx unavailable: gateway figures skipped")
        return
    at_gateway = load(f"{gateway}/api/bench/plain", ACCURACY_S)
    label = "nginx limit_req (burst=100 nodelay)"
    print(accuracy(label, at_gateway, ACCURACY_CAPACITY, ACCURACY_RATE))
    print(
        "  refusals: app 429 problem+json with RateLimit fields and exact Retry-After;"
        " nginx 429 (limit_req_status) with a static body, Retry-After fixed at 1 s"
    )


def main() -> None:
    print(
        f"gunicorn 2 workers x {WEB_THREADS} threads; {CONCURRENCY} concurrent keep-alive clients;"
        f" {ROUNDS} interleaved rounds of {ROUND_S:.0f} s per endpoint (median shown)"
    )
    token = bench_token()
    with tempfile.TemporaryDirectory(prefix="bench-ratelimit-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        workdir.chmod(0o755)  # nginx workers may run as an unprivileged user
        app_port = free_port()
        stack.enter_context(gunicorn(app_port, workdir))
        base = f"http://127.0.0.1:{app_port}"
        try:
            wait_ready(f"{base}/healthz")
        except AssertionError:
            print((workdir / "gunicorn.log").read_text()[-2000:])
            raise

        print("\n1. Cost of checking a limit (limits never reached), same server, same run")
        report_overhead(measure_overhead(base, token))
        print(
            f"\n1b. CPU per request in one process (Django test client, median of"
            f" {CPU_ROUNDS} x {CPU_REQUESTS}): steadier than req/s on a busy host"
        )
        report_cpu(measure_cpu(token))

        gateway = None
        binary = find_or_install_nginx()
        if binary is not None:
            nginx_port = free_port()
            stack.enter_context(
                nginx(binary, listen=nginx_port, upstream=app_port, workdir=workdir)
            )
            gateway = f"http://127.0.0.1:{nginx_port}"
            wait_ready(f"{gateway}/healthz")
        compare_gateway(base, gateway)
