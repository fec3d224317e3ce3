"""Idempotency keys side by side: ours, drf-idempotency (database, Redis), django-idempotency-key.

The same order-creating DRF view (bench/peers/urls.py) behind each library, served by
gunicorn (2 processes x 12 threads) on the bench Postgres and Redis. Per library:

* rows created by 48 concurrent identical requests with one key;
* whether a replay has the first answer's status and body;
* the same key with another body;
* the same key from two users (independent, or one user's answer given to the other);
* a first request that crashes after creating its order: what a retry gets, and how
  many orders exist afterwards;
* p50/p99 latency against the same view unprotected, interleaved.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.peers.servers import migrate, peer_server
from tests.processes import Answer, http_request

CONCURRENT = 48
THREADS = 12  # per gunicorn process
ROUNDS = 150
BODY = {"currency": "EUR", "amount": 1250}
OTHER_BODY = {"currency": "EUR", "amount": 9999}
CRASH = {"X-Bench-Crash": "after-order"}


@dataclass
class Row:
    name: str
    concurrent_rows: int = 0
    concurrent_statuses: str = ""
    replay: str = ""
    other_body: str = ""
    two_users: str = ""
    crash_retry: str = ""
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    base_p50_ms: float = 0.0
    base_p99_ms: float = 0.0
    notes: list[str] = field(default_factory=list)


def new_user() -> tuple[object, str]:
    from rest_framework.authtoken.models import Token

    from accounts.models import User

    user = User.objects.create_user(
        email=f"peers-{uuid.uuid4().hex}@example.com", password=uuid.uuid4().hex
    )
    return user, Token.objects.create(user=user).key


def orders_of(user: object) -> int:
    from orders.models import Order

    return Order.objects.filter(owner=user).count()


def post(url: str, token: str, key: str | None, body: dict, **headers: str) -> Answer:
    sent = dict(headers)
    if key is not None:
        sent["Idempotency-Key"] = key
    return http_request("POST", url, body=body, token=token, headers=sent, timeout=30)


def concurrency(url: str) -> tuple[int, str]:
    user, token = new_user()
    key = str(uuid.uuid4())
    barrier = threading.Barrier(CONCURRENT)
    statuses: Counter = Counter()
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        answer = post(url, token, key, BODY)
        with lock:
            statuses[answer.status] += 1

    threads = [threading.Thread(target=one) for _ in range(CONCURRENT)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return orders_of(user), " ".join(f"{n}x{s}" for s, n in sorted(statuses.items()))


def replay_and_reuse(url: str) -> tuple[str, str]:
    user, token = new_user()
    key = str(uuid.uuid4())
    first = post(url, token, key, BODY)
    again = post(url, token, key, BODY)
    same = first.status == again.status and first.text == again.text
    replay = "identical" if same else f"{first.status} then {again.status}"
    if not same and first.text == again.text:
        replay += ", same body"
    before = orders_of(user)
    other = post(url, token, key, OTHER_BODY)
    created = orders_of(user) - before
    reuse = f"{other.status}" + (f", {created} new order" if created else "")
    return replay, reuse


def two_users(url: str) -> str:
    _, token_a = new_user()
    user_b, token_b = new_user()
    key = str(uuid.uuid4())
    a = post(url, token_a, key, BODY)
    b = post(url, token_b, key, BODY)
    if b.status == 201 and orders_of(user_b) == 1 and b.text != a.text:
        return "independent"
    if b.text == a.text:
        return f"{b.status}: B gets A's order"
    return f"{b.status} for B"


def crash_then_retry(url: str) -> str:
    user, token = new_user()
    key = str(uuid.uuid4())
    first = post(url, token, key, BODY, **CRASH)
    retry = post(url, token, key, BODY)
    from orders.models import Order

    paid = Order.objects.filter(owner=user, status="paid").count()
    total = orders_of(user)
    return f"{first.status}, retry {retry.status}: {total} order(s), {paid} paid"


def overhead(base: str, names: list[str], rounds: int) -> dict[str, list[float]]:
    """Interleaved POSTs, a fresh key each time for the protected endpoints."""
    _, token = new_user()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            key = None if name == "unprotected" else str(uuid.uuid4())
            answer = post(f"{base}/peers/idem/{name}", token, key, BODY)
            if answer.status == 201:
                samples[name].append(answer.elapsed_s)
    return samples


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return 0.0
    if q == 0.5:
        return statistics.median(ordered) * 1000
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def preflight(base: str) -> None:
    """The unprotected view must create an order, or every figure below means nothing
    (e.g. a saturated shared Postgres answering "too many clients")."""
    _, token = new_user()
    answer = post(f"{base}/peers/idem/unprotected", token, None, BODY)
    if answer.status != 201:
        raise RuntimeError(f"the unprotected view answered {answer.status}: {answer.text[:200]}")


def scenarios(base: str, endpoint: str, label: str) -> Row:
    preflight(base)
    url = f"{base}/peers/idem/{endpoint}"
    row = Row(label)
    row.concurrent_rows, row.concurrent_statuses = concurrency(url)
    row.replay, row.other_body = replay_and_reuse(url)
    row.two_users = two_users(url)
    row.crash_retry = crash_then_retry(url)
    return row


def run(rounds: int = ROUNDS) -> list[Row]:
    migrate()
    rows: list[Row] = []
    # 2 x 12 threads: 48 requests still race across two processes, and the benchmark
    # holds at most 24 connections of a Postgres that other work shares.
    env = {"PEERS_KEY_PREFIX": f"peers-{uuid.uuid4().hex[:8]}", "WEB_THREADS": str(THREADS)}
    with tempfile.TemporaryDirectory(prefix="bench-peers-idem-") as tmp:
        workdir = Path(tmp)
        with peer_server(workdir, label="idem", **env) as base:
            names = ["unprotected", "ours", "django-idempotency-key"]
            labels = ["ours (@idempotent, Postgres)", "django-idempotency-key (cache + lock)"]
            rows += [
                scenarios(base, name, label) for name, label in zip(names[1:], labels, strict=True)
            ]
            samples = overhead(base, names, rounds)
            for row, name in zip(rows, names[1:], strict=True):
                fill_timing(row, samples[name], samples["unprotected"])
        for backend in ("database", "redis"):
            drf_env = {**env, "PEERS_DRF_IDEMPOTENCY_BACKEND": backend}
            with peer_server(workdir, label=f"idem-drf-{backend}", **drf_env) as base:
                row = scenarios(base, "drf-idempotency", f"drf-idempotency ({backend})")
                samples = overhead(base, ["unprotected", "drf-idempotency"], rounds)
                fill_timing(row, samples["drf-idempotency"], samples["unprotected"])
                rows.insert(len(rows) - 1, row)
    return rows


def fill_timing(row: Row, protected: list[float], plain: list[float]) -> None:
    row.p50_ms, row.p99_ms = pct(protected, 0.5), pct(protected, 0.99)
    row.base_p50_ms, row.base_p99_ms = pct(plain, 0.5), pct(plain, 0.99)


def report(rows: list[Row]) -> list[str]:
    lines = []
    for r in rows:
        timing = (
            f"    p50 {r.p50_ms:.1f} ms (x{ratio(r.p50_ms, r.base_p50_ms)}),"
            f" p99 {r.p99_ms:.1f} ms (x{ratio(r.p99_ms, r.base_p99_ms)}); unprotected"
            f" p50 {r.base_p50_ms:.1f} ms, p99 {r.base_p99_ms:.1f} ms"
        )
        lines += [
            f"{r.name}",
            f"    48 concurrent, one key: {r.concurrent_rows} order(s)  [{r.concurrent_statuses}]",
            f"    replay: {r.replay}; same key, other body: {r.other_body}",
            f"    same key, two users: {r.two_users}",
            f"    first request crashed after its order: {r.crash_retry}",
            timing,
        ]
    return lines


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"
