"""Failover experiments on a fleet: kill a node of each kind under traffic, check nothing is lost.

``python -m fleet chaos`` (``make fleet-chaos``) starts a fleet per scenario, drives
order traffic through nginx from clients that behave as documented (one
``Idempotency-Key`` per order, retried with the same key on 409/429/503 and on a lost
connection, honouring ``Retry-After``), injects the fault, puts back what was killed (as
a supervisor would), and checks the invariants:

- **0 lost orders**: every order acknowledged with a 201 is in the user's order list;
- **0 duplicates**: no user has more orders than keys it sent, and every answer for
  one key names one order;
- **0 undocumented errors**: every answer is 2xx, or 409/429/503 problem+json with
  ``Retry-After``; a connection error counts as undocumented;
- every ``order.created`` webhook of an acknowledged order reaches the receiver.

It prints and writes the time to recover (fault to the last failed attempt; attempts
are retried, so a failed attempt is not a failed order) to
``docs/chaos/fleet/<scenario>/report.{md,json}`` and a summary ``docs/chaos/fleet/README.md``.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.procs import ROOT, wait_for
from fleet.stack import Fleet, FleetSpec

CLIENTS = 12
# Between one client's orders: under orders_create's refill (1/s), so that a 429 is news.
PACE_S = 1.1
BEFORE_S = 6.0  # steady traffic before the fault
AFTER_S = 12.0  # traffic after the fault (recovery included)
ORDER_DEADLINE_S = 30.0  # one order's retries
DELIVERY_TIMEOUT_S = 90.0
# Compressed time for the experiments, as in chaos/scenarios/stack.py: durations only.
CHAOS_ENV = {
    "WEBHOOKS_SWEEP_INTERVAL_S": "1",
    "WEBHOOKS_REDISPATCH_AFTER_S": "10",
    "WEBHOOKS_RETRY_BASE_S": "0.5",
    "WEBHOOKS_RETRY_CAP_S": "2",
    "POSTGRES_BREAKER_RESET_S": "1",
    "BREAKER_PROBE_TICK_S": "0.1",
}


@dataclass
class Attempt:
    at: float
    status: int
    documented: bool
    code: str = ""


@dataclass
class Order:
    key: str
    order_id: str | None = None
    ids_seen: set[str] = field(default_factory=set)
    attempts: list[Attempt] = field(default_factory=list)


def call(
    method: str, url: str, *, body: Any = None, headers: dict | None = None, timeout: float = 10
) -> tuple[int, dict[str, str], Any]:
    """One HTTP call to the fleet (loopback); status 0 when no answer came."""
    data = json.dumps(body).encode() if body is not None else None
    sent = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=data, method=method, headers=sent)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status, got, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, got, raw = error.code, dict(error.headers), error.read()
    except OSError:
        return 0, {}, None
    try:
        parsed = json.loads(raw or b"null")
    except ValueError:
        parsed = None
    return status, got, parsed


def documented(status: int, headers: dict[str, str], body: Any) -> bool:
    if status in (200, 201):
        return True
    if status in (409, 429, 503):
        return (
            "Retry-After" in headers
            and isinstance(body, dict)
            and "code" in body
            and headers.get("Content-Type", "").startswith("application/problem+json")
        )
    return False


class Client(threading.Thread):
    """One user ordering through nginx until stopped, retrying each order with its key."""

    def __init__(self, fleet: Fleet, index: int, t0: float, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.fleet, self.t0, self.stop_event = fleet, t0, stop
        self.ip = f"198.19.{index}.{random.randint(1, 250)}"  # noqa: S311 - an address
        self.orders: list[Order] = []
        self.token = ""
        self.hook_path = f"/hooks/fleet-{index}-{uuid.uuid4().hex[:8]}"

    def headers(self, **extra: str) -> dict[str, str]:
        return {"X-Forwarded-For": self.ip, "Authorization": f"Token {self.token}", **extra}

    def setup(self) -> None:
        email = f"fleet-chaos-{uuid.uuid4().hex[:10]}@example.com"
        body = {"email": email, "password": "correct horse battery"}
        base, ip = self.fleet.url, {"X-Forwarded-For": self.ip}
        assert call("POST", f"{base}/api/v1/auth/signup", body=body, headers=ip)[0] == 201
        status, _, answer = call("POST", f"{base}/api/v1/auth/login", body=body, headers=ip)
        assert status == 200, (status, answer)
        self.token = answer["token"]
        receiver = f"http://127.0.0.1:{self.fleet.receiver_port}{self.hook_path}"
        status, _, hook = call(
            "POST",
            f"{base}/api/v1/webhooks/endpoints",
            body={"url": receiver, "event_types": ["order.created"]},
            headers=self.headers(),
        )
        assert status == 201, (status, hook)
        secret = hook.get("secret") or hook.get("signing_secret")
        control = f"http://127.0.0.1:{self.fleet.receiver_control_port}/control/secrets"
        call("POST", control, body={"path": self.hook_path, "secret": secret})

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.orders.append(self.place_order())
            self.stop_event.wait(PACE_S)

    def place_order(self) -> Order:
        order = Order(key=str(uuid.uuid4()))
        body = {"currency": "EUR", "items": [{"sku": "fleet", "quantity": 1, "unit_price": 500}]}
        deadline = time.monotonic() + ORDER_DEADLINE_S
        while time.monotonic() < deadline:
            status, headers, answer = call(
                "POST",
                f"{self.fleet.url}/api/v1/orders",
                body=body,
                headers=self.headers(**{"Idempotency-Key": order.key}),
                timeout=10,
            )
            code = answer.get("code", "") if isinstance(answer, dict) else ""
            order.attempts.append(
                Attempt(
                    time.monotonic() - self.t0, status, documented(status, headers, answer), code
                )
            )
            if status == 201 and isinstance(answer, dict):
                order.ids_seen.add(str(answer["id"]))
                order.order_id = str(answer["id"])
                return order
            if status not in (0, 409, 429, 502, 503, 504):
                return order  # a final refusal: counted, not retried
            wait = min(float(headers.get("Retry-After", "0.2") or 0.2), 1.0)
            time.sleep(random.uniform(0.1, max(0.2, wait)))  # noqa: S311 - jitter
        return order

    def listed_ids(self) -> list[str]:
        ids, url = [], f"{self.fleet.url}/api/v1/orders?page_size=100"
        while url:
            status, _, page = call("GET", url, headers=self.headers())
            assert status == 200, status
            ids += [str(o["id"]) for o in page["results"]]
            url = page.get("next")
            if url and url.startswith("/"):
                url = f"{self.fleet.url}{url}"
        return ids


@dataclass
class Scenario:
    name: str
    description: str
    inject: Callable[[Fleet], dict]  # returns figures of the fault itself
    heal: Callable[[Fleet, dict], dict]


def _kill_web(fleet: Fleet) -> dict:
    fleet.procs["web-2"].kill()
    return {"killed": "web-2 (SIGKILL of its gunicorn master and workers)"}


def _heal_web(fleet: Fleet, state: dict) -> dict:
    time.sleep(0)  # the node stays down for the rest of the traffic (AFTER_S)
    return {}


def _restart_web(fleet: Fleet) -> dict:
    started = time.monotonic()
    fleet.restart_exited()
    wait_for(lambda: fleet.web_ready(2), timeout=60, what="web-2 back")
    return {"web_2_back_after_restart_s": round(time.monotonic() - started, 2)}


def _kill_redis_master(fleet: Fleet) -> dict:
    master = fleet.cluster_masters()[0]
    proc = fleet.proc_on(master)
    assert proc is not None
    started = time.monotonic()
    proc.kill()
    wait_for(fleet.cluster_ok, timeout=60, interval=0.05, what="replica promoted")
    return {
        "killed": f"{proc.name} (master on port {master})",
        "replica_promoted_after_s": round(time.monotonic() - started, 2),
        "_proc": proc.name,
    }


def _restart_server(fleet: Fleet, state: dict) -> dict:
    name = state.pop("_proc")
    fleet.procs[name].start()
    return {"restarted": name}


def _kill_broker_master(fleet: Fleet) -> dict:
    master = fleet.broker_master()
    proc = fleet.proc_on(master)
    assert proc is not None
    started = time.monotonic()
    proc.kill()
    wait_for(lambda: fleet.broker_master() != master, timeout=60, what="sentinel failover")
    return {
        "killed": f"{proc.name} (broker master on port {master})",
        "sentinels_promoted_after_s": round(time.monotonic() - started, 2),
        "new_master_port": fleet.broker_master(),
        "_proc": proc.name,
    }


def _restart_pgbouncer(fleet: Fleet) -> dict:
    return {"pgbouncer_away_s": round(fleet.restart_pgbouncer(), 2), "killed": "pgbouncer"}


def _nothing(fleet: Fleet, state: dict) -> dict:
    return {}


SCENARIOS = [
    Scenario(
        "web-kill",
        "SIGKILL one of three web nodes during traffic; nginx routes around it; it is "
        "started again after the traffic",
        _kill_web,
        _heal_web,
    ),
    Scenario(
        "redis-master-kill",
        "SIGKILL a Redis Cluster master; its replica is promoted; the node is started "
        "again (it rejoins as a replica)",
        _kill_redis_master,
        _restart_server,
    ),
    Scenario(
        "broker-kill",
        "SIGKILL the broker master; the Sentinels promote a replica; the old master is "
        "started again (it rejoins as a replica)",
        _kill_broker_master,
        _restart_server,
    ),
    Scenario(
        "pgbouncer-restart",
        "SIGKILL PgBouncer and start it again on its port",
        _restart_pgbouncer,
        _nothing,
    ),
]


def run_scenario(spec: FleetSpec, scenario: Scenario) -> dict:
    spec.env = {**CHAOS_ENV, **spec.env}
    with Fleet(spec) as fleet:
        stop = threading.Event()
        clients = [Client(fleet, i, 0.0, stop) for i in range(1, CLIENTS + 1)]
        for client in clients:
            client.setup()
        t0 = time.monotonic()
        for client in clients:
            client.t0 = t0
        for client in clients:
            client.start()
        time.sleep(BEFORE_S)  # steady traffic: the experiment's own duration, not a wait
        fault_at = time.monotonic() - t0
        figures = scenario.inject(fleet)
        fault_done = time.monotonic() - t0
        figures |= scenario.heal(fleet, figures)
        time.sleep(AFTER_S)
        stop.set()
        for client in clients:
            client.join(timeout=ORDER_DEADLINE_S + 10)
        if scenario.name == "web-kill":
            figures |= _restart_web(fleet)
        restarted = fleet.restart_exited()
        result = evaluate(fleet, scenario, clients, fault_at, fault_done, figures)
        result["restarted_by_supervisor"] = restarted
    return result


def evaluate(  # noqa: PLR0917 - one call site, every figure of the run
    fleet: Fleet,
    scenario: Scenario,
    clients: list[Client],
    fault_at: float,
    fault_done: float,
    figures: dict,
) -> dict:
    orders = [o for c in clients for o in c.orders]
    attempts = [a for o in orders for a in o.attempts]
    acknowledged = {o.order_id for o in orders if o.order_id}
    listed: list[str] = []
    lost = duplicates = 0
    for client in clients:
        ids = client.listed_ids()
        listed += ids
        mine = {o.order_id for o in client.orders if o.order_id}
        lost += len(mine - set(ids))
        duplicates += max(0, len(ids) - len(client.orders))
    duplicates += sum(1 for o in orders if len(o.ids_seen) > 1)
    unfinished = [o.key for o in orders if not o.order_id]
    undocumented = [a for a in attempts if not a.documented]
    failed = [a for a in attempts if a.status not in (200, 201)]
    after_fault = [a for a in failed if a.at >= fault_at]
    recover_s = (max(a.at for a in after_fault) - fault_at) if after_fault else 0.0

    # Every order.created of an acknowledged order at the receiver.
    control = f"http://127.0.0.1:{fleet.receiver_control_port}/control/events"
    delivered: set[str] = set()

    def all_delivered() -> bool:
        status, _, events = call("GET", control, timeout=10)
        for event in events if status == 200 and isinstance(events, list) else []:
            body = event.get("body") or {}
            data = body.get("data", body) if isinstance(body, dict) else {}
            order = data.get("order", data) if isinstance(data, dict) else {}
            if isinstance(order, dict) and order.get("id"):
                delivered.add(str(order["id"]))
        return acknowledged <= delivered

    started = time.monotonic()
    with contextlib.suppress(TimeoutError):
        wait_for(all_delivered, timeout=DELIVERY_TIMEOUT_S, interval=0.5, what="webhooks")
    delivery_wait_s = time.monotonic() - started
    missing_webhooks = len(acknowledged - delivered)
    result = {
        "scenario": scenario.name,
        "description": scenario.description,
        "fleet": {
            "web_nodes": fleet.spec.web_nodes,
            "workers": {
                "default": fleet.spec.default_workers,
                "webhooks": fleet.spec.webhooks_workers,
            },
            "clients": CLIENTS,
        },
        "fault_at_s": round(fault_at, 2),
        "fault_injected_in_s": round(fault_done - fault_at, 2),
        "fault": {k: v for k, v in figures.items() if not k.startswith("_")},
        "orders": len(orders),
        "acknowledged": len(acknowledged),
        "unfinished": len(unfinished),
        "listed": len(listed),
        "lost_orders": lost,
        "duplicates": duplicates,
        "attempts": len(attempts),
        "attempts_by_status": dict(sorted(Counter(str(a.status) for a in attempts).items())),
        "failed_attempts_by_code": dict(
            sorted(Counter(f"{a.status} {a.code}".strip() for a in failed).items())
        ),
        "undocumented": len(undocumented),
        "time_to_recover_s": round(recover_s, 2),
        "webhooks_missing": missing_webhooks,
        "webhooks_delivered_within_s": round(delivery_wait_s, 2),
    }
    result["web_metrics"] = web_metrics(fleet)
    result["passed"] = (
        lost == 0
        and duplicates == 0
        and not undocumented
        and not unfinished
        and missing_webhooks == 0
    )
    return result


def web_metrics(fleet: Fleet) -> dict:
    """Summed over the web nodes: limiter decisions by mode, degraded answers by kind."""
    modes: Counter = Counter()
    degraded: Counter = Counter()
    for index in range(1, fleet.spec.web_nodes + 1):
        status, _, _ = call("GET", f"{fleet.web_url(index)}/healthz", timeout=2)
        if status != 200:
            continue
        request = urllib.request.Request(f"{fleet.web_url(index)}/metrics")  # noqa: S310
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
            text = response.read().decode()
        for line in text.splitlines():
            if line.startswith("resilience_ratelimit_decisions_total{"):
                mode = line.split('mode="', 1)[1].split('"', 1)[0]
                modes[mode] += float(line.rsplit(" ", 1)[1])
            elif line.startswith("resilience_degraded_total{"):
                labels = line.split("{", 1)[1].split("}", 1)[0]
                degraded[labels] += float(line.rsplit(" ", 1)[1])
    return {
        "ratelimit_decisions_by_mode": {k: int(v) for k, v in sorted(modes.items())},
        "degraded_answers": {k: int(v) for k, v in sorted(degraded.items()) if v},
    }


def render(result: dict) -> str:
    verdict = "PASS" if result["passed"] else "FAIL"
    lines = [
        f"# Fleet failover: {result['scenario']} ({verdict})",
        "",
        result["description"] + ".",
        "",
        (
            f"Fleet: {result['fleet']['web_nodes']} web nodes behind nginx, workers "
            f"{result['fleet']['workers']}, PgBouncer, Redis Cluster 3+3, broker + 3 "
            f"Sentinels; {result['fleet']['clients']} clients ordering through nginx, each "
            "order retried with its Idempotency-Key. Generated by `make fleet-chaos`."
        ),
        "",
        "| invariant | value |",
        "|---|---|",
        f"| lost orders (201 but not listed) | {result['lost_orders']} |",
        f"| duplicates | {result['duplicates']} |",
        f"| undocumented answers | {result['undocumented']} |",
        f"| orders never acknowledged | {result['unfinished']} |",
        f"| webhooks of acknowledged orders missing | {result['webhooks_missing']} |",
        "",
        "| figure | value |",
        "|---|---|",
        f"| fault at | {result['fault_at_s']} s |",
        f"| time to recover (fault to last failed attempt) | {result['time_to_recover_s']} s |",
        f"| orders acknowledged / placed | {result['acknowledged']} / {result['orders']} |",
        f"| attempts by status | {result['attempts_by_status']} |",
        f"| failed attempts by code | {result['failed_attempts_by_code'] or '-'} |",
        f"| webhooks all delivered within | {result['webhooks_delivered_within_s']} s after |",
    ]
    for key, value in result["fault"].items():
        lines.append(f"| {key.replace('_', ' ')} | {value} |")
    lines.append(f"| restarted by the supervisor | {result['restarted_by_supervisor'] or '-'} |")
    metrics = result.get("web_metrics", {})
    lines.append(
        "| rate-limit decisions by mode (all web nodes) | "
        f"{metrics.get('ratelimit_decisions_by_mode') or '-'} |"
    )
    lines.append(f"| degraded answers (all web nodes) | {metrics.get('degraded_answers') or '-'} |")
    return "\n".join(lines) + "\n"


def run_all(spec: FleetSpec, *, only: list[str], out: str) -> int:
    out_dir = ROOT / out
    chosen = [s for s in SCENARIOS if not only or s.name in only]
    results = []
    for scenario in chosen:
        print(f"fleet chaos: {scenario.name} ...", flush=True)
        result = run_scenario(spec, scenario)
        results.append(result)
        target = out_dir / scenario.name
        target.mkdir(parents=True, exist_ok=True)
        (target / "report.json").write_text(json.dumps(result, indent=2) + "\n")
        (target / "report.md").write_text(render(result))
        print(
            f"  {'PASS' if result['passed'] else 'FAIL'}: lost {result['lost_orders']}, "
            f"duplicates {result['duplicates']}, undocumented {result['undocumented']}, "
            f"webhooks missing {result['webhooks_missing']}, "
            f"recovered in {result['time_to_recover_s']} s; fault {result['fault']}",
            flush=True,
        )
    summarize(out_dir)
    return 0 if all(r["passed"] for r in results) else 1


COMPONENT_BACK = {
    "web-kill": "web_2_back_after_restart_s",
    "redis-master-kill": "replica_promoted_after_s",
    "broker-kill": "sentinels_promoted_after_s",
    "pgbouncer-restart": "pgbouncer_away_s",
}


def summarize(out_dir: Path) -> None:
    """``README.md`` of the reports: one line per scenario."""
    summary = [
        "# Fleet failover experiments",
        "",
        "`make fleet-chaos`; one fleet per scenario. *Failed attempts until* is the time",
        "from the fault to the last attempt that was not a 2xx (every attempt retried with",
        "its key); *component back* is the killed component's own recovery: the web node",
        "restarted, the replica promoted, the Sentinels' new master, PgBouncer listening.",
        "",
        (
            "| scenario | lost | duplicates | undocumented | hooks missing | failed attempts"
            " until | component back | verdict |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(out_dir.glob("*/report.json")):
        r = json.loads(path.read_text())
        back = r["fault"].get(COMPONENT_BACK.get(r["scenario"], ""), "-")
        summary.append(
            f"| [{r['scenario']}]({r['scenario']}/report.md) | {r['lost_orders']} | "
            f"{r['duplicates']} | {r['undocumented']} | {r['webhooks_missing']} | "
            f"{r['time_to_recover_s']} s | {back} s | {'PASS' if r['passed'] else 'FAIL'} |"
        )
    (out_dir / "README.md").write_text("\n".join(summary) + "\n")
