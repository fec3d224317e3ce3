"""Measured capacity of one web node and one worker node, on a fleet of this machine.

``python -m fleet capacity`` (``make fleet-capacity``): a fleet with one web node (one
gunicorn master, ``WEB_WORKERS`` workers of ``WEB_THREADS`` threads) behind nginx, and
no webhooks worker at first.

- **web node**: closed-loop clients (each its own user and client IP, so no rate limit
  binds) for ``DURATION_S`` each on an authenticated read (``GET /api/v1/orders``) and
  on order creation (``POST /api/v1/orders``, payments simulator healthy); answers per
  second, p50 and p99 latency;
- **worker node**: ``BACKLOG`` webhook deliveries queued while no webhooks worker runs,
  then one webhooks worker node (prefork, concurrency 4) started: deliveries per second
  until the receiver has them all.

Prints the figures and writes them to ``docs/scaling-capacity.json``; docs/scaling.md
quotes them.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

from fleet.chaos import call
from fleet.procs import ROOT, wait_for
from fleet.stack import Fleet, FleetSpec

DURATION_S = 10.0
CLIENTS = 8
BACKLOG = 300
USERS_FOR_BACKLOG = 12  # 25 orders each: within orders_create's burst of 30


def _user(fleet: Fleet, index: int, hook: bool = False) -> dict[str, str]:
    ip = f"198.20.{index // 250}.{index % 250 + 1}"
    body = {
        "email": f"cap-{uuid.uuid4().hex[:10]}@example.com",
        "password": "correct horse battery",
    }
    headers = {"X-Forwarded-For": ip}
    assert call("POST", f"{fleet.url}/api/v1/auth/signup", body=body, headers=headers)[0] == 201
    _, _, login = call("POST", f"{fleet.url}/api/v1/auth/login", body=body, headers=headers)
    headers["Authorization"] = f"Token {login['token']}"
    if hook:
        path = f"/hooks/cap-{index}"
        status, _, created = call(
            "POST",
            f"{fleet.url}/api/v1/webhooks/endpoints",
            body={
                "url": f"http://127.0.0.1:{fleet.receiver_port}{path}",
                "event_types": ["order.created"],
            },
            headers=headers,
        )
        assert status == 201, created
        control = f"http://127.0.0.1:{fleet.receiver_control_port}/control/secrets"
        call("POST", control, body={"path": path, "secret": created.get("secret")})
    return headers


def _closed_loop(fleet: Fleet, users: list[dict], method: str, path: str) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + DURATION_S
    body = {"currency": "EUR", "items": [{"sku": "cap", "quantity": 1, "unit_price": 100}]}

    def client(headers: dict[str, str]) -> None:
        while time.monotonic() < deadline:
            extra = {"Idempotency-Key": str(uuid.uuid4())} if method == "POST" else {}
            started = time.monotonic()
            status, _, _ = call(
                method,
                f"{fleet.url}{path}",
                body=body if method == "POST" else None,
                headers={**headers, **extra},
            )
            with lock:
                latencies.append(time.monotonic() - started)
                statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=client, args=(u,)) for u in users]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    latencies.sort()
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    return {
        "requests": len(latencies),
        "ok_per_s": round(ok / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def measure(spec: FleetSpec) -> dict:
    spec.web_nodes, spec.webhooks_workers = 1, 0
    # Per-user order limit lifted: the measurement is of the node, not of the policy.
    spec.env = {
        "RATELIMIT_POLICY_OVERRIDES": json.dumps(
            {"orders_create": {"capacity": 100000, "refill_rate": 100000}}
        ),
        **spec.env,
    }
    with Fleet(spec) as fleet:
        users = [_user(fleet, i) for i in range(CLIENTS)]
        reads = _closed_loop(fleet, users, "GET", "/api/v1/orders")
        writes = _closed_loop(fleet, users, "POST", "/api/v1/orders")
        # The worker node: a backlog of deliveries, then one webhooks worker.
        hooked = [_user(fleet, 100 + i, hook=True) for i in range(USERS_FOR_BACKLOG)]
        body = {"currency": "EUR", "items": [{"sku": "cap", "quantity": 1, "unit_price": 100}]}
        for index in range(BACKLOG):
            headers = {**hooked[index % len(hooked)], "Idempotency-Key": str(uuid.uuid4())}
            status, _, _ = call("POST", f"{fleet.url}/api/v1/orders", body=body, headers=headers)
            assert status == 201, status
        control = f"http://127.0.0.1:{fleet.receiver_control_port}/control/stats"
        before = call("GET", control)[2]["unique"]
        started = time.monotonic()
        fleet.start_worker("webhooks", 1)
        wait_for(
            lambda: call("GET", control)[2]["unique"] - before >= BACKLOG,
            timeout=300,
            interval=0.2,
            what="the backlog delivered",
        )
        drained_s = time.monotonic() - started
    return {
        "machine": "2 cores shared with other work; every fleet process on it",
        "web_node": {
            "gunicorn_workers": int(fleet.app_env().get("WEB_WORKERS", "1")),
            "threads": int(fleet.app_env().get("WEB_THREADS", "16")),
            "clients": CLIENTS,
            "read_GET_orders": reads,
            "write_POST_orders": writes,
        },
        "worker_node": {
            "queue": "webhooks",
            "concurrency": 4,
            "backlog": BACKLOG,
            "drained_in_s_including_start": round(drained_s, 1),
            "deliveries_per_s": round(BACKLOG / drained_s, 1),
        },
    }


def run(spec: FleetSpec) -> int:
    figures = measure(spec)
    print(json.dumps(figures, indent=2))
    (ROOT / "docs" / "scaling-capacity.json").write_text(json.dumps(figures, indent=2) + "\n")
    return 0
