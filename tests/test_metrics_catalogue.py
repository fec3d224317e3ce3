"""Every catalogued metric is exported by web and both workers after a short scenario.

The stack is real: gunicorn (two workers, multiprocess metrics), worker-default and
worker-webhooks (prefork, each with its own multiprocess directory and metrics port),
the payments simulator and the webhook receiver in this process, and a fault proxy in
front of the rate limiter's Redis. The scenario: an order with payments up (delivered
to a webhook endpoint), an idempotent replay, orders while payments is down (retries,
breaker opens, orders deferred), a deferred authorisation and an idempotency completer
run in worker-default, and the limiter's Redis cut (errors, fallback).

It also follows one request id from the HTTP request into the worker that delivered
the webhook its order caused, and from the test into a task it published.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token

from chaos.receiver import ReceiverService
from tests.metrics_catalogue import catalogue
from tests.processes import (
    GUNICORN_COMMAND,
    celery_worker_command,
    child_environment,
    free_port,
    http_request,
    log_events,
    running,
    wait_for,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, databases=["default", "background"]),
]

ORDER = {"currency": "EUR", "items": [{"sku": "sku-1", "quantity": 1, "unit_price": 1000}]}


def exported(text: str, name: str) -> bool:
    """Whether the exposition has a sample of ``name`` (histograms: its buckets)."""
    pattern = rf"^{re.escape(name)}(?:_bucket|_count|_sum)?(?:\{{| )"
    return re.search(pattern, text, re.MULTILINE) is not None


@pytest.fixture
def webhook_endpoint(user, settings):
    """A receiver in this process and an endpoint of ``user`` subscribed to order.created."""
    from webhooks.services import endpoint_create

    settings.WEBHOOKS_ALLOWED_TARGETS = ["127.0.0.1"]
    with ReceiverService() as receiver:
        endpoint = endpoint_create(
            owner=user, url=f"{receiver.api_url}/hooks/obs", event_types=["order.created"]
        )
        receiver.set_secret("/hooks/obs", endpoint.secret)
        yield endpoint


def test_every_catalogued_metric_is_exported_after_a_short_scenario(
    payments, webhook_endpoint, toxiproxy, user, tmp_path
):
    from django.conf import settings

    from common.tasks import beat_heartbeat
    from orders.tasks import authorize_deferred_payment
    from resilience.models import IdempotencyRecord
    from resilience.request_id import bind_request_id, reset_request_id
    from resilience.tasks import complete_stale_idempotency_records

    token = Token.objects.create(user=user).key
    auth = {"Authorization": f"Token {token}"}

    redis_url = settings.REDIS_URL
    redis_host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
    proxy = toxiproxy.create_proxy("ratelimit-redis", "127.0.0.1:0", redis_host_port)
    proxy_port = int(proxy["listen"].rsplit(":", 1)[1])
    redis_db = redis_url.rsplit("/", 1)[1]

    web_port, default_port, webhooks_port = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{web_port}"
    dirs = {name: tmp_path / name for name in ("web", "default", "webhooks")}
    for directory in dirs.values():
        directory.mkdir()
    common = {
        "PAYMENTS_URL": payments.api_url,
        "PAYMENTS_BREAKER_MIN_CALLS": "2",
        "WEBHOOKS_ALLOWED_TARGETS": "127.0.0.1",
        "RATELIMIT_REDIS_URL": f"redis://127.0.0.1:{proxy_port}/{redis_db}",
    }
    web_env = child_environment(
        **common,
        WEB_PORT=str(web_port),
        WEB_WORKERS="2",
        PROMETHEUS_MULTIPROC_DIR=str(dirs["web"]),
    )
    default_env = child_environment(
        **common,
        PROMETHEUS_MULTIPROC_DIR=str(dirs["default"]),
        WORKER_METRICS_PORT=str(default_port),
    )
    webhooks_env = child_environment(
        **common,
        PROMETHEUS_MULTIPROC_DIR=str(dirs["webhooks"]),
        WORKER_METRICS_PORT=str(webhooks_port),
    )
    suffix = uuid.uuid4().hex[:8]
    default_log, webhooks_log = tmp_path / "default.log", tmp_path / "webhooks.log"
    with (
        running(GUNICORN_COMMAND, env=web_env, log_path=tmp_path / "web.log"),
        running(
            celery_worker_command(queues="default", name=f"obs-default-{suffix}", concurrency=2),
            env=default_env,
            log_path=default_log,
        ),
        running(
            celery_worker_command(queues="webhooks", name=f"obs-webhooks-{suffix}", concurrency=2),
            env=webhooks_env,
            log_path=webhooks_log,
        ),
    ):
        wait_for(lambda: http_request("GET", f"{base}/healthz")[0] == 200, timeout=30, what="web")
        for log in (default_log, webhooks_log):
            wait_for(
                lambda log=log: " ready." in log.read_text(errors="replace"),
                timeout=30,
                what=f"{log.name} ready",
            )

        # 1. Payments up: paid, and the order.created event delivered by worker-webhooks.
        request_id = f"obs-{suffix}"
        key = str(uuid.uuid4())
        status, _, body, _ = http_request(
            "POST",
            f"{base}/api/v1/orders",
            body=ORDER,
            headers={**auth, "Idempotency-Key": key, "X-Request-ID": request_id},
        )
        assert status == 201, body
        assert json.loads(body)["status"] == "paid"
        # 2. The same key again: replayed.
        status, headers, _, _ = http_request(
            "POST", f"{base}/api/v1/orders", body=ORDER, headers={**auth, "Idempotency-Key": key}
        )
        assert status == 201
        assert headers.get("Idempotent-Replayed") == "true"

        # 3. Payments down: retries (a 503 with a short Retry-After fits the request
        #    budget), the breaker opens, orders are deferred.
        payments.set_faults(error_rate=1.0, error_status=503, retry_after=0)
        deferred = []
        for _ in range(3):
            status, _, body, _ = http_request(
                "POST",
                f"{base}/api/v1/orders",
                body=ORDER,
                headers={**auth, "Idempotency-Key": str(uuid.uuid4())},
            )
            assert status == 201, body
            assert json.loads(body)["status"] == "pending_payment"
            deferred.append(json.loads(body)["id"])

        # 4. worker-default: a deferred authorisation (published under a request id of
        #    ours) and an idempotency completer run on a stale record.
        IdempotencyRecord.objects.create(
            principal=user,
            key=str(uuid.uuid4()),
            scope="orders.create",
            request_method="POST",
            request_path="/api/v1/orders",
            fingerprint="0" * 64,
            last_run_at=timezone.now() - timedelta(hours=1),
            created_at=timezone.now() - timedelta(hours=1),
        )
        task_request_id, bound = bind_request_id(f"obs-task-{suffix}")
        try:
            authorize_deferred_payment.delay(deferred[0])
        finally:
            reset_request_id(bound)
        complete_stale_idempotency_records.delay()
        beat_heartbeat.delay()

        # 5. The limiter's Redis cut: errors counted, decisions fall back per process.
        wait_for(
            lambda: any(
                e.get("event") == "webhook delivery attempt" for e in log_events(webhooks_log)
            ),
            timeout=30,
            what="webhook delivered",
        )
        toxiproxy.set_enabled("ratelimit-redis", False)
        for _ in range(3):
            assert http_request("GET", f"{base}/api/v1/orders", headers=auth)[0] == 200

        def tasks_done() -> bool:
            text = http_request("GET", f"http://127.0.0.1:{default_port}/metrics")[2]
            return (
                "resilience.tasks.complete_stale_idempotency_records" in text
                and "orders.tasks.authorize_deferred_payment" in text
                and "common.tasks.beat_heartbeat" in text
                and "resilience_idempotency_completer_runs_total{" in text
            )

        wait_for(tasks_done, timeout=30, interval=0.2, what="worker-default tasks counted")
        payments.set_faults(error_rate=0.0)
        scraped = {
            "web": http_request("GET", f"{base}/metrics")[2],
            "worker-default": http_request("GET", f"http://127.0.0.1:{default_port}/metrics")[2],
            "worker-webhooks": http_request("GET", f"http://127.0.0.1:{webhooks_port}/metrics")[2],
        }

    missing = []
    for metric in catalogue().values():
        for source in metric.exported_by:
            if source == "prometheus":  # made by Prometheus itself (up), not by a process
                continue
            processes = ["worker-default", "worker-webhooks"] if source == "workers" else [source]
            missing += [
                (metric.name, p) for p in processes if not exported(scraped[p], metric.name)
            ]
    assert not missing, f"catalogued but not exported: {missing}"

    # The request id followed the order into the webhook worker, and ours into the task.
    deliveries = [
        e for e in log_events(webhooks_log) if e.get("event") == "webhook delivery attempt"
    ]
    assert request_id in {e["request_id"] for e in deliveries}
    task_lines = [e for e in log_events(default_log) if e.get("order_id") == deferred[0]]
    assert task_lines, "no log line of the deferred authorisation"
    assert {e["request_id"] for e in task_lines} == {task_request_id}
