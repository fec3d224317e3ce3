"""The fleet (make fleet) keeps the service's promises across nodes, on real components.

One fleet for the module: 3 web nodes behind nginx, a worker per queue, two beats (one
must stand by), PgBouncer in transaction pooling, a Redis Cluster of 3 masters and 3
replicas, a broker behind 3 Sentinels. Every process is ours, on ports 23000-23999, and
is stopped after the module even when a test fails. Figures are printed (``-s``).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from urllib.parse import urlsplit

import psycopg
import pytest

from fleet.procs import wait_for
from fleet.stack import ROOT, Fleet, FleetSpec
from tests.processes import http_request

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

LIMIT_PER_MINUTE = 200
DURATION_S = 3.0
CLIENTS = 8
TOLERANCE = 0.02


def _database_url() -> str:
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/resilient")
    parts = urlsplit(base)
    return parts._replace(path=f"/{parts.path.strip('/') or 'resilient'}_fleet").geturl()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    spec = FleetSpec(
        web_nodes=3,
        beats=2,
        database_url=_database_url(),
        run_dir=tmp_path_factory.mktemp("fleet"),
        settings_module="config.settings.test",
        env={
            # The flood limit as "N per minute", per client IP: each test is its own IP.
            "RATELIMIT_POLICY_OVERRIDES": json.dumps(
                {"flood": {"capacity": LIMIT_PER_MINUTE, "refill_rate": LIMIT_PER_MINUTE / 60}}
            ),
            "BEAT_LOCK_LEASE_S": "3",
        },
    )
    started = time.monotonic()
    with Fleet(spec) as running:
        print(f"\nfleet up in {time.monotonic() - started:.1f} s\n{running.summary()}")
        yield running


def client_ip() -> str:
    """A client address of the test's own (nginx appends it to X-Forwarded-For)."""
    raw = uuid.uuid4().int
    return f"198.18.{raw % 250}.{(raw >> 8) % 250 + 1}"


def api(fleet: Fleet, method: str, path: str, *, ip: str, base: str | None = None, **kw):
    headers = {"X-Forwarded-For": ip, **kw.pop("headers", {})}
    return http_request(method, f"{base or fleet.url}{path}", headers=headers, **kw)


def signed_up(fleet: Fleet, ip: str) -> str:
    email = f"fleet-{uuid.uuid4().hex[:10]}@example.com"
    body = {"email": email, "password": "correct horse battery"}
    assert api(fleet, "POST", "/api/v1/auth/signup", ip=ip, body=body).status == 201
    answer = api(fleet, "POST", "/api/v1/auth/login", ip=ip, body=body)
    assert answer.status == 200, answer.text
    return answer.json()["token"]


def test_a_limit_of_n_per_minute_admits_n_over_all_nodes_through_nginx(fleet):
    ip = client_ip()
    results: list[tuple[float, int]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + DURATION_S

    def hammer() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", fleet.nginx_port, timeout=5)
        local = []
        try:
            while time.monotonic() < deadline:
                sent = time.monotonic()
                connection.request("GET", "/api/v1/auth/me", headers={"X-Forwarded-For": ip})
                response = connection.getresponse()
                response.read()
                local.append((sent, response.status))
        finally:
            connection.close()
            with lock:
                results.extend(local)

    threads = [threading.Thread(target=hammer) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=DURATION_S + 30)
    assert not any(t.is_alive() for t in threads)

    statuses = [status for _, status in results]
    assert set(statuses) <= {401, 429}, sorted(set(statuses))
    admitted = statuses.count(401)
    elapsed = max(s for s, _ in results) - min(s for s, _ in results)
    expected = LIMIT_PER_MINUTE + LIMIT_PER_MINUTE / 60 * elapsed
    per_node = []
    for index in range(1, fleet.spec.web_nodes + 1):
        text = http_request("GET", f"{fleet.web_url(index)}/metrics").text
        per_node.append(
            sum(
                float(v)
                for v in re.findall(
                    r'^resilience_ratelimit_decisions_total\{[^}]*policy="flood"[^}]*'
                    r'result="(?:allowed|limited)"[^}]*\} (\S+)$',
                    text,
                    re.MULTILINE,
                )
            )
        )
    print(
        f"\nrate limit {LIMIT_PER_MINUTE}/min over {fleet.spec.web_nodes} nodes via nginx: "
        f"{len(results)} requests in {elapsed:.2f} s, admitted {admitted}, expected "
        f"{expected:.1f} ({(admitted - expected) / expected:+.2%}); decisions per node "
        f"{[int(n) for n in per_node]}"
    )
    assert statuses.count(429) > 0
    assert all(n > 0 for n in per_node), "nginx spread the requests over every node"
    assert abs(admitted - expected) <= TOLERANCE * expected


def _payments_state(fleet: Fleet, index: int) -> str:
    answer = http_request("GET", f"{fleet.web_url(index)}/readyz", timeout=2)
    return answer.json().get("breakers", {}).get("payments", {}).get("state", "?")


def manage(fleet: Fleet, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=fleet.app_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_a_breaker_forced_open_is_seen_by_every_node(fleet):
    nodes = range(1, fleet.spec.web_nodes + 1)
    assert all(_payments_state(fleet, i) == "closed" for i in nodes)
    try:
        manage(fleet, "breakers", "open", "payments")
        opened = time.monotonic()
        seen = {}
        while len(seen) < len(nodes) and time.monotonic() - opened < 10:
            for index in nodes:
                if index not in seen and _payments_state(fleet, index) != "closed":
                    seen[index] = time.monotonic() - opened
        print(
            "\nbreakers open payments seen by "
            + ", ".join(f"web-{i} after {s * 1000:.0f} ms" for i, s in sorted(seen.items()))
        )
        assert sorted(seen) == list(nodes)
    finally:
        manage(fleet, "breakers", "close", "payments")
    wait_for(
        lambda: all(_payments_state(fleet, i) == "closed" for i in nodes),
        timeout=10,
        what="payments closed on every node",
    )


def test_idempotency_holds_when_duplicates_land_on_different_nodes(fleet):
    ip = client_ip()
    token = signed_up(fleet, ip)
    key = f"fleet-{uuid.uuid4()}"
    body = {"currency": "EUR", "items": [{"sku": "fleet", "quantity": 1, "unit_price": 990}]}
    headers = {"Idempotency-Key": key}
    answers: list = []
    lock = threading.Lock()

    def send(index: int) -> None:
        answer = api(
            fleet,
            "POST",
            "/api/v1/orders",
            ip=ip,
            base=fleet.web_url(index),
            token=token,
            body=body,
            headers=headers,
        )
        with lock:
            answers.append((index, answer))

    # At once on every node, then once more on each after the first finished.
    threads = [threading.Thread(target=send, args=(i,)) for i in range(1, 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for index in range(1, 4):
        send(index)
    statuses = [(i, a.status, a.headers.get("Idempotent-Replayed")) for i, a in answers]
    created = [
        a for _, a in answers if a.status == 201 and not a.headers.get("Idempotent-Replayed")
    ]
    ids = {a.json()["id"] for _, a in answers if a.status == 201}
    listing = api(fleet, "GET", "/api/v1/orders", ip=ip, token=token).json()
    print(f"\nsame Idempotency-Key on web-1..3 (3 at once, then 3 more): {statuses}")
    print(f"orders created {len(created)}, distinct ids {sorted(ids)}, listed {listing['count']}")
    assert {s for _, s, _ in statuses} <= {201, 409}
    assert len(created) == 1
    assert len(ids) == 1
    assert listing["count"] == 1
    assert all(a.status == 201 for _, a in answers[3:]), "the later duplicates are replays"


def test_the_timeouts_fire_through_pgbouncer_in_transaction_pooling(fleet):
    figures = {}
    for pool in ("web", "background"):
        parts = urlsplit(fleet.pgbouncer_url(pool))
        with psycopg.connect(
            host="127.0.0.1",
            port=parts.port,
            dbname=parts.path.strip("/"),
            user=parts.username or "postgres",
            autocommit=True,
            connect_timeout=5,
        ) as connection:
            # Every transaction, on whichever server connection PgBouncer lends.
            seen = {
                tuple(
                    connection.execute(f"SHOW {name}").fetchone()[0]
                    for name in (
                        "statement_timeout",
                        "lock_timeout",
                        "idle_in_transaction_session_timeout",
                    )
                )
                for _ in range(10)
            }
            figures[pool] = seen
            if pool == "web":
                started = time.monotonic()
                with pytest.raises(psycopg.errors.QueryCanceled):
                    connection.execute("SELECT pg_sleep(4)")
                figures["cancelled_after_s"] = round(time.monotonic() - started, 2)
    print(f"\nthrough PgBouncer (transaction pooling): {figures}")
    assert figures["web"] == {("2s", "1s", "5s")}
    assert figures["background"] == {("15s", "1s", "5s")}


def test_exactly_one_beat_schedules_and_a_standby_takes_over(fleet):
    def roles() -> tuple[int, int]:
        logs = [fleet.procs[f"beat-{i}"].log_path.read_text(errors="replace") for i in (1, 2)]
        active = sum("beat lock taken: scheduling" in text for text in logs)
        standing = sum("held elsewhere: standing by" in text for text in logs)
        return active, standing

    wait_for(lambda: roles() == (1, 1), timeout=30, what="one beat active, one standing by")
    print(f"\nbeats: {roles()[0]} scheduling, {roles()[1]} standing by")

    def active(index: int) -> bool:
        log = fleet.procs[f"beat-{index}"].log_path.read_text(errors="replace")
        return "beat lock taken: scheduling" in log

    holder = 1 if active(1) else 2
    standby = 3 - holder
    fleet.procs[f"beat-{holder}"].kill()
    killed = time.monotonic()
    wait_for(lambda: active(standby), timeout=30, what="the standby beat takes over")
    print(
        f"beat-{holder} killed: beat-{standby} scheduling after "
        f"{time.monotonic() - killed:.1f} s (lease {fleet.spec.env['BEAT_LOCK_LEASE_S']} s)"
    )
    fleet.procs[f"beat-{holder}"].start()


def test_prometheus_discovers_every_node_from_the_files_make_fleet_writes(fleet):
    from tests.test_observability_files import _promtool

    config = fleet.write_prometheus_targets()
    checked = subprocess.run(
        [_promtool(), "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    targets = {}
    for path in sorted((config.parent / "targets").glob("*.json")):
        for group in json.loads(path.read_text()):
            for target in group["targets"]:
                targets[target] = (path.stem, group["labels"]["node"])
    expected = fleet.spec.web_nodes + fleet.spec.default_workers + fleet.spec.webhooks_workers
    assert len(targets) == expected
    for target, (job, node) in targets.items():
        text = http_request("GET", f"http://{target}/metrics").text
        assert "resilience_" in text, (job, node)
    print(f"\nPrometheus file SD: {sorted(targets.values())}")


def _decisions(fleet: Fleet, policy: str) -> Counter:
    counted: Counter = Counter()
    for index in range(1, fleet.spec.web_nodes + 1):
        text = http_request("GET", f"{fleet.web_url(index)}/metrics").text
        for line in text.splitlines():
            if line.startswith("resilience_ratelimit_decisions_total{") and (
                f'policy="{policy}"' in line
            ):
                mode = re.search(r'mode="(\w+)"', line)[1]
                counted[mode] += float(line.rsplit(" ", 1)[1])
    return counted


def test_the_login_decision_over_two_policies_runs_in_one_cluster_slot(fleet):
    before = _decisions(fleet, "login_username")
    for _ in range(3):
        signed_up(fleet, client_ip())  # each login decides login_ip and login_username at once
    after = _decisions(fleet, "login_username")
    print(f"\nlogin_username decisions by mode on the cluster: {dict(after - before)}")
    assert after["redis"] - before["redis"] >= 3
    assert after["fallback"] == before["fallback"]
