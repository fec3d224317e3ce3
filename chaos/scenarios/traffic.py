"""Users and traffic: real accounts made through the API, requests sent at a fixed rate.

The generator is open-loop (a request leaves every ``1/rps`` seconds whether or not the
previous ones answered), as real clients are, and bounded three ways: a cap on requests
in flight (beyond it a tick is recorded as ``not_sent``), a cap on the total number of
requests, and a wall-clock limit. It behaves like a well-written client: every order
carries an ``Idempotency-Key``, and an order that got no answer, a 409, a 429 or a 5xx
is retried with the same key after ``Retry-After`` (capped, jittered).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from chaos.scenarios.client import Answer, ChaosError, request
from resilience import timing

NOT_SENT = -1  # status of a tick the client could not send (too many requests in flight)
ORDER = {"currency": "EUR", "items": [{"sku": "chaos-widget", "quantity": 1, "unit_price": 1999}]}
# Endpoint classes of the report: what a user does, not which URL.
ENDPOINT_CLASSES = {
    "get": "reads",
    "list": "reads",
    "create": "orders",
    "storm": "orders",
    "report": "reports",
}
# The priority class each operation's view declares (resilience.concurrency.priority):
# what the load shedder protects first. Kept beside the views' declarations by a test.
PRIORITY_OF_OP = {
    "create": "critical",
    "storm": "critical",
    "get": "critical",
    "list": "normal",
    "report": "best_effort",
}
OPERATIONS = ("create", "get", "list", "report")
# The endpoint classes whose requests call a dependency; absent: every class does (the
# database and Redis serve every request, payments only order creation).
CLASSES_CALLING = {"payments": frozenset({"orders"})}
RETRYABLE = frozenset({0, 409, 429, 500, 502, 503, 504})


# Users get source addresses 127.0.0.2 ... 127.0.0.251 in turn (all loopback), so that the
# per-IP limits (flood) see many clients, as they would in production, not one.
SOURCE_ADDRESSES = 250
USERS_CHECK_TIMEOUT_S = 30.0


@dataclass
class User:
    email: str
    token: str = ""
    source_ip: str | None = None

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}


def make_users(base_url: str, count: int) -> list[User]:
    """``count`` new users with API tokens, written straight into the stack's database.

    Signup and login are rate-limited per IP; making users through them would need a
    harness override of those limits, which production does not ship. The users and
    tokens are rows like any others (an unusable password: nobody logs in as them).
    Needs Django set up on the database the stack uses (the command's or the test's).
    """
    from django.db import transaction
    from rest_framework.authtoken.models import Token

    from accounts.models import User as Account

    run = uuid.uuid4().hex[:10]
    accounts = [Account(email=f"chaos-{run}-{i}@example.com") for i in range(count)]
    for account in accounts:
        account.set_unusable_password()
    with transaction.atomic():
        Account.objects.bulk_create(accounts)
        saved = list(Account.objects.filter(email__startswith=f"chaos-{run}-").order_by("id"))
        tokens = [Token(key=Token.generate_key(), user=account) for account in saved]
        Token.objects.bulk_create(tokens)
    users = [
        User(t.user.email, t.key, f"127.0.0.{2 + i % SOURCE_ADDRESSES}")
        for i, t in enumerate(tokens)
    ]
    # A stack just started may still answer 503 for a moment; 401 means another database.
    deadline = time.monotonic() + USERS_CHECK_TIMEOUT_S
    while True:
        me = request("GET", f"{base_url}/api/v1/auth/me", headers=users[0].auth)
        if me.status == 200:
            return users
        if me.status == 401 or time.monotonic() > deadline:
            raise ChaosError(
                f"users made in this process's database are unknown to {base_url} "
                f"(GET /api/v1/auth/me -> {me.status} {me.error or me.body!r:.200}): run "
                "the command with the DATABASE_URL of the stack under test"
            )
        time.sleep(0.5)


@dataclass
class Sample:
    """One request as the client saw it; ``t`` is its start, seconds from the run's t0."""

    t: float
    latency_s: float
    op: str  # create | get | list | report | storm
    status: int
    user: int
    retry_after: str | None = None
    problem: bool = False  # answered application/problem+json
    order_status: str | None = None
    order_id: str | None = None
    key: str | None = None
    attempt: int = 1
    error: str | None = None
    code: str | None = None  # the problem+json ``code`` of a refusal (overloaded, ...)
    # Seconds the server spent on each dependency (its Server-Timing header); None when
    # the answer carried none (no HTTP answer, no guarded call, or the header is off).
    dependency_s: dict[str, float] | None = None


@dataclass
class OrderKey:
    """What the client knows about one logical order (one Idempotency-Key)."""

    user: int
    order_ids: set[str] = field(default_factory=set)
    attempts: int = 0
    final_status: int | None = None


class Traffic:
    """Fixed-rate, bounded traffic against one stack; run it with start()/stop()."""

    def __init__(
        self,
        base_url: str,
        users: list[User],
        *,
        rps: float,
        t0: float,
        max_seconds: float,
        max_requests: int,
        max_in_flight: int = 32,
        create_share: float = 0.5,
        mix: dict[str, float] | None = None,
        client_retries: int = 3,
        retry_after_cap_s: float = 2.0,
        seed: int | None = None,
    ) -> None:
        if rps <= 0 or not users:
            raise ChaosError("traffic needs rps > 0 and at least one user")
        self.base_url = base_url
        self.users = users
        self.rps = rps
        self.t0 = t0
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.max_in_flight = max_in_flight
        self.create_share = create_share
        # Share of each operation; by default orders at create_share and reads of one's
        # own orders (a list while one has none) for the rest.
        self.mix = dict(mix or {"create": create_share, "get": 1 - create_share})
        unknown = set(self.mix) - set(OPERATIONS)
        if unknown or abs(sum(self.mix.values()) - 1) > 1e-6:
            raise ChaosError(f"traffic mix {self.mix} must share 1 among {OPERATIONS}")
        self.client_retries = client_retries
        self.retry_after_cap_s = retry_after_cap_s
        self.samples: list[Sample] = []
        self.keys: dict[str, OrderKey] = {}
        self._orders_by_user: dict[int, list[str]] = {i: [] for i in range(len(users))}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sent = 0
        self._in_flight = 0
        self._rng = random.Random(seed)
        self._pool = ThreadPoolExecutor(
            max_workers=max_in_flight, thread_name_prefix="chaos-traffic"
        )
        self._thread = threading.Thread(target=self._pace, name="chaos-pacer", daemon=True)
        self._operations: dict[str, Callable[[int], None]] = {
            "create": self._create,
            "get": self._get,
            "list": self._list,
            "report": self._report,
        }

    # -- control -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop sending, wait for requests in flight (each has a client timeout)."""
        self._stop.set()
        self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    def created_order_ids(self) -> dict[str, int]:
        """Order id -> user index, for every order the API answered 201 for."""
        with self._lock:
            return {oid: key.user for key in self.keys.values() for oid in key.order_ids}

    # -- sending -----------------------------------------------------------------------

    def set_rate(self, rps: float) -> None:
        """From now on, send ``rps`` requests per second (a load spike, and its end)."""
        if rps <= 0:
            raise ChaosError("traffic needs rps > 0")
        with self._lock:
            self.rps = rps

    @property
    def operations(self) -> dict[str, Callable[[int], None]]:
        """Send one request of each kind as a user (recorded like the paced ones)."""
        return dict(self._operations)

    def known_orders(self) -> list[list[str]]:
        """Per user, the orders its reads fetch."""
        with self._lock:
            return [list(self._orders_by_user[i]) for i in range(len(self.users))]

    def pick(self) -> str:
        """The next operation of the mix."""
        roll, acc = self._rng.random(), 0.0
        for op, share in self.mix.items():
            acc += share
            if roll < acc:
                return op
        return next(reversed(self.mix))

    def _pace(self) -> None:
        due = 0.0
        tick = 0
        while not self._stop.is_set():
            delay = due - (time.monotonic() - self.t0)
            # The pacing sleep is the one fixed wait here: it *is* the request rate.
            if delay > 0 and self._stop.wait(delay):
                return
            if self.now() > self.max_seconds or not self._reserve():
                return
            with self._lock:
                due += 1.0 / self.rps
            user = tick % len(self.users)
            tick += 1
            op_name = self.pick()
            with self._lock:
                crowded = self._in_flight >= self.max_in_flight
                if not crowded:
                    self._in_flight += 1
            if crowded:
                self._record(
                    Sample(self.now(), 0.0, op_name, NOT_SENT, user, error="in_flight_cap")
                )
                continue
            self._pool.submit(self._run, self._operations[op_name], user)

    def _reserve(self, n: int = 1) -> bool:
        with self._lock:
            if self._sent + n > self.max_requests:
                return False
            self._sent += n
            return True

    def _run(self, op: Callable[[int], None], user: int) -> None:
        try:
            op(user)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _record(self, sample: Sample) -> None:
        with self._lock:
            self.samples.append(sample)

    def send(
        self, op: str, user: int, method: str, path: str, **kwargs: Any
    ) -> tuple[Answer, Sample]:
        """Send one request as ``user`` and record it."""
        who = self.users[user]
        headers = {**who.auth, **kwargs.pop("headers", {})}
        # As the gateway (deploy/nginx) stamps each request: the stack's queue-time budget
        # then counts every wait before Django, the accept backlog included.
        headers.setdefault("X-Request-Start", f"t={time.time():.3f}")
        started = self.now()
        answer = request(
            method, f"{self.base_url}{path}", headers=headers, source_ip=who.source_ip, **kwargs
        )
        body = answer.body if isinstance(answer.body, dict) else {}
        sample = Sample(
            t=started,
            latency_s=answer.latency_s,
            op=op,
            status=answer.status,
            user=user,
            retry_after=answer.retry_after,
            problem=answer.headers.get("content-type", "").startswith("application/problem+json"),
            order_status=body.get("status") if answer.status in (200, 201) else None,
            order_id=str(body["id"]) if answer.status in (200, 201) and "id" in body else None,
            error=answer.error,
            code=body.get("code") if answer.status not in (200, 201) else None,
            dependency_s=timing.parse(answer.headers["server-timing"])
            if "server-timing" in answer.headers
            else None,
        )
        self._record(sample)
        return answer, sample

    def create_order(
        self,
        user: int,
        key: str,
        *,
        op: str = "create",
        honour_retry_after: bool = True,
        retries: int | None = None,
    ) -> None:
        """POST one order with ``key``, retrying like a client until a final answer."""
        retries = self.client_retries if retries is None else retries
        with self._lock:
            self.keys.setdefault(key, OrderKey(user))
        for attempt in range(1, retries + 2):
            answer, sample = self.send(
                op, user, "POST", "/api/v1/orders", body=ORDER, headers={"Idempotency-Key": key}
            )
            sample.key, sample.attempt = key, attempt
            with self._lock:
                record = self.keys[key]
                record.attempts += 1
                record.final_status = answer.status
                if sample.order_id:
                    record.order_ids.add(sample.order_id)
                    if sample.order_id not in self._orders_by_user[user]:
                        self._orders_by_user[user].append(sample.order_id)
            if answer.status not in RETRYABLE or attempt > retries or self._stop.is_set():
                return
            if honour_retry_after:
                wait = min(_seconds(answer.retry_after, default=0.5), self.retry_after_cap_s)
                wait *= self._rng.uniform(0.5, 1.0)  # jitter: clients must not retry in step
                if self._stop.wait(wait):
                    return
            if not self._reserve():
                return

    def _create(self, user: int) -> None:
        self.create_order(user, f"chaos-{uuid.uuid4()}")

    def _get(self, user: int) -> None:
        with self._lock:
            known = self._orders_by_user[user]
            order_id = self._rng.choice(known) if known else None
        if order_id is None:
            self._list(user)
        else:
            self.send("get", user, "GET", f"/api/v1/orders/{order_id}")

    def _list(self, user: int) -> None:
        self.send("list", user, "GET", "/api/v1/orders?page_size=5")

    def _report(self, user: int) -> None:
        self.send("report", user, "GET", "/api/v1/orders/report")

    def know_orders(self, user: int, order_ids: Iterable[str]) -> None:
        """Orders ``user`` already has (made before the run): its reads fetch them."""
        with self._lock:
            self._orders_by_user[user].extend(order_ids)

    # -- bursts ------------------------------------------------------------------------

    def storm(self, *, clients: int, copies: int, retries: int) -> None:
        """Many clients at once, each sending ``copies`` identical orders concurrently and
        retrying immediately (no backoff, Retry-After ignored): a retry storm."""
        if not self._reserve(clients * copies * (retries + 1)):
            return
        barrier = threading.Barrier(clients * copies)
        jobs: list[tuple[int, str]] = []
        for index in range(clients):
            key = f"storm-{uuid.uuid4()}"
            jobs.extend((index % len(self.users), key) for _ in range(copies))

        def fire(job: tuple[int, str]) -> None:
            user, key = job
            # A broken barrier only means the copies leave less exactly together.
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=10)
            self.create_order(user, key, op="storm", honour_retry_after=False, retries=retries)

        with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="chaos-storm") as pool:
            list(pool.map(fire, jobs))


def _seconds(value: str | None, *, default: float) -> float:
    try:
        return max(0.0, float(value)) if value is not None else default
    except ValueError:
        return default


def orders_by_key(samples: Iterable[Sample]) -> dict[str, set[str]]:
    """Idempotency key -> every order id a 2xx answer for it named."""
    result: dict[str, set[str]] = {}
    for sample in samples:
        if sample.key and sample.order_id:
            result.setdefault(sample.key, set()).add(sample.order_id)
    return result
