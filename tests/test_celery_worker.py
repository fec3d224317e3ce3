"""A real Celery worker process runs a task that reads and writes through ``background``."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token

from accounts.tasks import purge_expired_tokens
from tests.processes import celery_worker_command, child_environment, log_events, running, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, databases=["default", "background"]),
]


def test_worker_task_uses_the_background_pool_while_requests_use_default(
    tmp_path, make_user, auth_client
):
    stale_user, _ = make_user()
    Token.objects.create(user=stale_user)
    Token.objects.filter(user=stale_user).update(created=timezone.now() - timedelta(days=30))

    log = tmp_path / "worker.log"
    command = celery_worker_command(queues="default", name=f"test-{tmp_path.name}")
    with running(command, env=child_environment(), log_path=log):
        wait_for(
            lambda: "ready" in log.read_text(errors="replace"), timeout=30, what="worker ready"
        )
        purge_expired_tokens.delay()
        # Meanwhile the request path keeps working on its own pool.
        assert auth_client.get("/api/v1/orders").status_code == 200
        wait_for(
            lambda: not Token.objects.filter(user=stale_user).exists(),
            timeout=30,
            what="purge by worker",
        )
        purged = wait_for(
            lambda: [e for e in log_events(log) if e.get("event") == "expired tokens purged"],
            timeout=10,
            what="the task's log line",
        )
    assert purged[0]["deleted"] == 1
    assert purged[0]["db_alias"] == "background"
    assert purged[0]["application_name"] == "resilient-background"
