"""Webhook delivery with real processes: Celery workers (with beat), gunicorn, Redis.

The receiver is the reference one (chaos.receiver) in this process on free ports; the
worker runs as a subprocess against the test database and the test Redis database.
Schedules are compressed through the environment of the worker.
"""

from __future__ import annotations

import itertools
import statistics
import time
from contextlib import ExitStack, contextmanager
from datetime import timedelta

import pytest

from conftest import client_for
from orders.models import Order
from resilience.breakers import breaker
from tests.processes import (
    GUNICORN_COMMAND,
    celery_worker_command,
    child_environment,
    free_port,
    http_request,
    log_events,
    running,
    wait_for,
    worker_ready,
)
from webhooks import services
from webhooks.models import Delivery, DeliveryAttempt, OutboxEvent
from webhooks.tests.conftest import emit, make_endpoint

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, databases=["default", "background"]),
    pytest.mark.usefixtures("no_rate_limits"),
]

ORDER = {"currency": "EUR", "items": [{"sku": "abc", "quantity": 1, "unit_price": 700}]}
# Worker-side settings shared by the tests: a fast sweep and a short claim lease.
FAST = {"WEBHOOKS_SWEEP_INTERVAL_S": "0.2", "WEBHOOKS_LEASE_S": "40"}


@pytest.fixture(autouse=True)
def receiver(request):
    from chaos.receiver import ReceiverService

    with ReceiverService() as service:
        yield service


def purge_broker() -> None:
    """Drop messages other tests left in the test Redis database's queues."""
    from config.celery import app

    app.control.purge()


@contextmanager
def worker(
    tmp_path, *, name: str = "wh", concurrency: int = 2, may_die: bool = False, **environ: str
):
    """A Celery worker on both queues with embedded beat (the sweep), until the block ends.

    Unless ``may_die``, the worker must still be running when the block ends.
    """
    log = tmp_path / f"{name}.log"
    command = celery_worker_command(
        queues="webhooks,default",
        name=f"{name}-{tmp_path.name}",
        concurrency=concurrency,
        beat_schedule=tmp_path / f"{name}-beat",
    )
    with running(command, env=child_environment(**FAST, **environ), log_path=log) as process:
        wait_for(lambda: worker_ready(log), timeout=30, what="worker ready")
        yield log
        assert may_die or process.poll() is None, log.read_text(errors="replace")[-3000:]


def all_delivered(count: int):
    return lambda: Delivery.objects.filter(status="succeeded").count() == count


def test_orders_reach_the_receiver_exactly_once_with_valid_signatures(
    payments, user, receiver, tmp_path
):
    purge_broker()
    make_endpoint(user, receiver, event_types=["order.created", "order.paid"])
    client = client_for(user)
    with worker(tmp_path):
        for _ in range(10):
            response = client.post("/api/v1/orders", ORDER, format="json")
            assert (response.status_code, response.json()["status"]) == (201, "paid")
        wait_for(all_delivered(20), timeout=60, what="20 deliveries")
    stats = receiver.stats()
    assert stats["unique"] == 20
    assert stats["rejected"] == 0  # every signature verified
    received = {(e["id"], e["body"]["type"]) for e in receiver.events()}
    emitted = {(str(e.id), e.type) for e in OutboxEvent.objects.all()}
    assert received == emitted
    assert len({e["body"]["data"]["order"]["id"] for e in receiver.events()}) == 10


def test_attempt_times_follow_the_jittered_schedule(user, receiver, tmp_path):
    base, cap = 0.4, 3.2
    purge_broker()
    endpoint = make_endpoint(user, receiver)
    # Every delivery fails several times (500, no Retry-After), then succeeds.
    receiver.set_faults(fail_first_n=20, error_status=500)
    with worker(
        tmp_path,
        WEBHOOKS_RETRY_BASE_S=str(base),
        WEBHOOKS_RETRY_CAP_S=str(cap),
        WEBHOOKS_MAX_ATTEMPTS="30",
        WEBHOOK_BREAKER_FAIL_MAX="1000",  # the schedule alone, without the breaker
    ):
        for _ in range(4):
            emit(user)
        wait_for(all_delivered(4), timeout=90, what="4 deliveries")

    normalised, lateness = [], []
    for delivery in Delivery.objects.filter(endpoint=endpoint):
        attempts = list(DeliveryAttempt.objects.filter(delivery=delivery).order_by("number"))
        assert attempts[-1].outcome == "succeeded"
        for current, following in itertools.pairwise(attempts):
            assert current.outcome == "retry"
            ceiling = min(cap, base * 2 ** (current.number - 1))
            delay = (current.next_attempt_at - current.finished_at).total_seconds()
            assert -0.01 <= delay <= ceiling + 0.01  # full jitter: uniform(0, ceiling)
            normalised.append(delay / ceiling)
            late = (following.started_at - current.next_attempt_at).total_seconds()
            lateness.append(late)
    assert len(normalised) >= 16
    # The dispatcher follows the schedule: never early, late by at most a sweep or two.
    assert min(lateness) >= 0
    assert max(lateness) < 1.5, lateness
    # Jitter spreads the delays over the whole range instead of a fixed backoff.
    assert min(normalised) < 0.35, normalised
    assert max(normalised) > 0.65, normalised
    assert statistics.pstdev(normalised) > 0.1


def test_receiver_down_breaker_opens_deliveries_back_off_then_all_arrive(user, receiver, tmp_path):
    reset_s, fail_max, count = 2.0, 3, 10
    purge_broker()
    endpoint = make_endpoint(user, receiver)
    dependency = services.target_dependency(endpoint.url)
    receiver.set_faults(down=True)
    with worker(
        tmp_path,
        WEBHOOK_BREAKER_FAIL_MAX=str(fail_max),
        WEBHOOK_BREAKER_RESET_S=str(reset_s),
        WEBHOOKS_BREAKER_JITTER_S="0.5",
        WEBHOOKS_RETRY_BASE_S="0.2",
        WEBHOOKS_RETRY_CAP_S="1",
        WEBHOOKS_MAX_ATTEMPTS="100",
    ) as log:
        outage_started = time.monotonic()
        for _ in range(count):
            emit(user)
        # The breaker (shared state in Redis) opens, seen from this process too.
        wait_for(
            lambda: breaker(dependency).current_state == "open", timeout=30, what="breaker open"
        )
        # Keep the receiver down for at least two open periods.
        wait_for(
            lambda: (
                time.monotonic() - outage_started > 2.5 * reset_s
                and len(log_events(log, "webhook delivery deferred")) >= count
            ),
            timeout=60,
            what="deliveries deferred by the open breaker",
        )
        outage = time.monotonic() - outage_started
        attempts_in_outage = DeliveryAttempt.objects.count()
        deferred = len(log_events(log, "webhook delivery deferred"))
        assert not Delivery.objects.filter(status="dead").exists()

        receiver.set_faults(down=False)
        wait_for(all_delivered(count), timeout=60, what="every delivery after recovery")

    # No spinning: real attempts during the outage are the ones that opened the breaker
    # plus about one trial per worker process per open period; the rest waited.
    periods = outage / reset_s + 2
    assert attempts_in_outage <= fail_max + 2 * periods, attempts_in_outage
    # A deferral pushes a delivery to the breaker's reopening (or 1 s while a trial runs).
    assert deferred <= count * (outage / 1.0 + 3), deferred
    assert receiver.stats()["unique"] == count
    assert {a.outcome for a in DeliveryAttempt.objects.all()} <= {"retry", "succeeded"}


def call(method: str, url: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    answer = http_request(method, url, token=token, body=body)
    return answer.status, answer.json()


def test_broker_down_orders_still_created_outbox_grows_then_everything_arrives(
    payments, user, receiver, own_redis, tmp_path
):
    from rest_framework.authtoken.models import Token

    make_endpoint(user, receiver, event_types=["order.created", "order.paid"])
    token = Token.objects.create(user=user).key
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    broker = {
        "CELERY_BROKER_URL": own_redis.url,
        "RATELIMIT_ENABLED": "false",
    }
    web_env = child_environment(
        **FAST, **broker, WEB_PORT=str(port), WEB_WORKERS="1", PAYMENTS_URL=payments.api_url
    )
    with ExitStack() as stack:
        stack.enter_context(running(GUNICORN_COMMAND, env=web_env, log_path=tmp_path / "web.log"))
        log = stack.enter_context(worker(tmp_path, may_die=True, **broker))
        wait_for(lambda: _healthy(base), timeout=30, what="gunicorn ready")
        for _ in range(2):
            assert call("POST", f"{base}/api/v1/orders", token, ORDER)[0] == 201
        wait_for(all_delivered(4), timeout=60, what="deliveries before the outage")

        own_redis.kill()
        latencies = []
        for _ in range(10):
            started = time.perf_counter()
            status, body = call("POST", f"{base}/api/v1/orders", token, ORDER)
            latencies.append(time.perf_counter() - started)
            assert (status, body.get("status")) == (201, "paid"), body
        waiting = Delivery.objects.filter(status="pending", enqueued_at__isnull=True).count()
        assert waiting == 20  # the outbox holds every event of the outage
        assert max(latencies) < 5.0, latencies  # the request deadline; no broker hang

        own_redis.start()  # same port, empty: every message of the past is gone
        if "Unrecoverable error" in log.read_text(errors="replace"):
            # kombu 5.7 can crash a worker whose broker dies while it holds an unacked
            # message (GOTCHAS.md); in production its supervisor restarts it. So do we.
            log = stack.enter_context(worker(tmp_path, name="wh-restarted", **broker))
        wait_for(all_delivered(24), timeout=120, what="every delivery after the outage")
        assert log_events(log, "webhook delivery attempt")

    assert Order.objects.count() == 12
    assert OutboxEvent.objects.count() == 24
    stats = receiver.stats()
    assert stats["unique"] == 24
    assert stats["rejected"] == 0
    assert {e["id"] for e in receiver.events()} == {
        str(i) for i in OutboxEvent.objects.values_list("id", flat=True)
    }


def _healthy(base: str) -> bool:
    return http_request("GET", f"{base}/healthz", timeout=2).status == 200


def test_a_worker_killed_mid_delivery_is_taken_over_after_its_lease(user, receiver, tmp_path):
    """The claim is a lease: a delivery whose worker died is attempted again, once."""
    purge_broker()
    endpoint = make_endpoint(user, receiver)
    emit(user)
    delivery = Delivery.objects.get(endpoint=endpoint)
    # As a dead worker leaves it: claimed (lease set, attempt counted), lease run out.
    Delivery.objects.filter(id=delivery.id).update(
        lease_id="00000000-0000-0000-0000-000000000001",
        attempts=1,
        enqueued_at=None,
        next_attempt_at=delivery.created_at - timedelta(seconds=1),
    )
    with worker(tmp_path):
        wait_for(all_delivered(1), timeout=30, what="delivery taken over")
    delivery.refresh_from_db()
    assert delivery.attempts == 2
    assert receiver.stats()["unique"] == 1
