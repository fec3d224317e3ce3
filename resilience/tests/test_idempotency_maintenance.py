"""Purge, completer and admin of idempotency records, against the real Postgres."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.urls import reverse
from prometheus_client import REGISTRY

from conftest import client_for
from orders.models import Order
from resilience.db_routing import using_alias
from resilience.idempotency import (
    idempotency_records_complete_stale,
    idempotency_records_purge_expired,
    override_clock,
    register_completer,
    unregister_completer,
)
from resilience.models import IdempotencyRecord
from resilience.tasks import complete_stale_idempotency_records, purge_expired_idempotency_records
from resilience.tests import idempotency_views as views
from resilience.tests.idempotency_helpers import (
    URLS,
    FakeClock,
    authorizations_for,
    new_key,
    post,
    reset_test_views,
)

pytestmark = pytest.mark.urls(URLS)


@pytest.fixture(autouse=True)
def _clean_test_views():
    reset_test_views()
    yield
    reset_test_views()


@pytest.fixture
def order_completer():
    register_completer(views.SCOPE, views.complete_order)
    yield
    unregister_completer(views.SCOPE)


def make_record(user, *, age_s: float = 0, **fields) -> IdempotencyRecord:
    at = FakeClock().at - timedelta(seconds=age_s)
    values = {
        "principal": user,
        "key": new_key(),
        "scope": "tests.maintenance",
        "request_method": "POST",
        "request_path": "/x",
        "fingerprint": "0" * 64,
        "last_run_at": at,
        "created_at": at,
    }
    values.update(fields)
    return IdempotencyRecord.objects.create(**values)


def crash_after_phase_1(user) -> str:
    """A request that died after phase 1: its record waits at ``order_created``."""
    client = client_for(user)
    client.raise_request_exception = False
    key = new_key()

    def die() -> None:
        raise RuntimeError("worker killed")

    views.FAULTS["after_order_created"] = die
    assert post(client, key).status_code == 500
    views.FAULTS.clear()
    return key


# --- Purge ------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_purge_deletes_only_expired_records_in_bounded_batches(user):
    retention = django_settings.IDEMPOTENCY_RETENTION_S
    expired = [make_record(user, age_s=retention + 60 + i) for i in range(5)]
    kept = [make_record(user, age_s=retention - 60), make_record(user, age_s=0)]
    before = REGISTRY.get_sample_value("resilience_idempotency_purged_records_total") or 0

    # Two batches of two per run: the run stops there and leaves the rest for the next.
    assert idempotency_records_purge_expired(batch_size=2, max_batches=2) == 4
    remaining = set(IdempotencyRecord.objects.values_list("pk", flat=True))
    assert {r.pk for r in kept} <= remaining
    assert len(remaining & {r.pk for r in expired}) == 1

    assert idempotency_records_purge_expired(batch_size=2, max_batches=2) == 1
    assert set(IdempotencyRecord.objects.values_list("pk", flat=True)) == {r.pk for r in kept}
    assert idempotency_records_purge_expired(batch_size=2, max_batches=2) == 0
    after = REGISTRY.get_sample_value("resilience_idempotency_purged_records_total")
    assert after == before + 5


@pytest.mark.django_db
def test_a_purged_key_starts_a_new_request(auth_client, user):
    key = new_key()
    assert post(auth_client, key).status_code == 201
    clock = FakeClock()
    clock.advance(seconds=django_settings.IDEMPOTENCY_RETENTION_S + 1)
    with override_clock(clock):
        assert idempotency_records_purge_expired() == 1
        again = post(auth_client, key)
    assert again.status_code == 201
    assert "Idempotent-Replayed" not in again
    assert Order.objects.filter(owner=user).count() == 2


@pytest.mark.django_db(transaction=True, databases=["default", "background"])
def test_purge_task_runs_on_the_background_alias(user):
    make_record(user, age_s=django_settings.IDEMPOTENCY_RETENTION_S + 1)
    with using_alias("background"):
        assert purge_expired_idempotency_records() == 1
    assert not IdempotencyRecord.objects.exists()


def test_retention_below_24_hours_is_refused_at_start_up():
    result = subprocess.run(
        [sys.executable, "-c", "import config.settings.base"],
        env={**os.environ, "IDEMPOTENCY_RETENTION_S": "3600"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "IDEMPOTENCY_RETENTION_S must be at least 86400" in result.stderr


# --- Completer ----------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True, databases=["default", "background"])
def test_completer_re_drives_a_stale_record_once(user, order_completer):
    key = crash_after_phase_1(user)
    clock = FakeClock()
    with override_clock(clock), using_alias("background"):
        # Not stale yet: the client's own retry gets the first chance.
        assert complete_stale_idempotency_records()["completed"] == 0
        clock.advance(seconds=django_settings.IDEMPOTENCY_COMPLETER_AFTER_S + 1)
        counts = complete_stale_idempotency_records()
        assert counts["completed"] == 1
        assert complete_stale_idempotency_records()["completed"] == 0  # finished stays so

    record = IdempotencyRecord.objects.get(principal=user, key=key)
    assert (record.recovery_point, record.response_status) == ("finished", 201)
    assert record.locked_at is None
    order = Order.objects.get(owner=user)
    assert order.status == "paid"
    assert len(authorizations_for(order.id)) == 1

    # The client's late retry gets what the completer stored, and nothing runs again.
    replay = post(client_for(user), key)
    assert replay.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == str(order.id)
    assert replay["Location"] == f"/api/v1/orders/{order.id}"
    assert len(authorizations_for(order.id)) == 1


@pytest.mark.django_db
def test_completer_skips_live_locks_unknown_scopes_and_started_records(user, order_completer):
    after = django_settings.IDEMPOTENCY_COMPLETER_AFTER_S
    live = make_record(
        user,
        age_s=after + 10,
        scope=views.SCOPE,
        recovery_point="order_created",
        locked_at=FakeClock().at,
        lock_token=uuid.uuid4(),
    )
    unknown_scope = make_record(user, age_s=after + 10, recovery_point="order_created")
    started = make_record(user, age_s=after + 10, scope=views.SCOPE)

    counts = idempotency_records_complete_stale()
    assert counts == {"completed": 0, "deferred": 1, "failed": 0, "lock_lost": 0, "skipped": 0}
    live.refresh_from_db()
    unknown_scope.refresh_from_db()
    started.refresh_from_db()
    assert live.attempts == unknown_scope.attempts == 1  # never touched
    assert started.attempts == 2  # tried, deferred (nothing durable to finish) and unlocked
    assert started.locked_at is None
    assert started.recovery_point == "started"


@pytest.mark.django_db
def test_a_failing_completer_releases_the_record_for_the_next_run(user):
    def broken(ctx):
        raise RuntimeError("payments still down")

    register_completer("tests.broken", broken)
    try:
        after = django_settings.IDEMPOTENCY_COMPLETER_AFTER_S
        record = make_record(user, age_s=after + 10, scope="tests.broken", recovery_point="x")
        before = (
            REGISTRY.get_sample_value(
                "resilience_idempotency_completer_runs_total",
                {"scope": "tests.broken", "result": "failed"},
            )
            or 0
        )
        assert idempotency_records_complete_stale()["failed"] == 1
        record.refresh_from_db()
        assert (record.recovery_point, record.locked_at, record.attempts) == ("x", None, 2)
        # last_run_at moved, so the record waits a full threshold before the next try.
        assert idempotency_records_complete_stale()["failed"] == 0
        after_count = REGISTRY.get_sample_value(
            "resilience_idempotency_completer_runs_total",
            {"scope": "tests.broken", "result": "failed"},
        )
        assert after_count == before + 1
    finally:
        unregister_completer("tests.broken")


@pytest.mark.django_db
def test_completer_batch_is_bounded(user):
    register_completer("tests.batch", lambda _ctx: None)
    try:
        after = django_settings.IDEMPOTENCY_COMPLETER_AFTER_S
        for _ in range(5):
            make_record(user, age_s=after + 10, scope="tests.batch", recovery_point="x")
        assert idempotency_records_complete_stale(batch_size=3)["deferred"] == 3
        assert idempotency_records_complete_stale(batch_size=3)["deferred"] == 2
    finally:
        unregister_completer("tests.batch")


# --- Admin --------------------------------------------------------------------------------------
CHANGELIST = "admin:resilience_idempotencyrecord_changelist"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query",
    [
        "",
        "?state=finished",
        "?state=in_flight",
        "?state=stale_lock",
        "?state=resumable",
        "?age=1h",
        "?age=24h",
        "?age=old",
        "?age=expired",
        "?q=admin%40example.com",
    ],
)
def test_admin_changelist_renders_with_every_filter(admin_client, admin_user, query):
    key = new_key()
    post(client_for(admin_user), key)
    response = admin_client.get(reverse(CHANGELIST) + query)
    assert response.status_code == 200
    if query in ("", "?state=finished", "?age=1h", "?q=admin%40example.com"):
        assert key in response.content.decode()


@pytest.mark.django_db
def test_admin_search_by_exact_key(admin_client, admin_user):
    key = new_key()
    post(client_for(admin_user), key)
    assert key in admin_client.get(reverse(CHANGELIST), {"q": key}).content.decode()


@pytest.mark.django_db
def test_admin_state_filter_separates_the_states(admin_client, user):
    timeout = django_settings.IDEMPOTENCY_LOCK_TIMEOUT_S
    now = FakeClock().at
    finished = make_record(user, recovery_point="finished", response_status=201)
    in_flight = make_record(user, recovery_point="order_created", locked_at=now)
    stale = make_record(
        user, recovery_point="order_created", locked_at=now - timedelta(seconds=timeout + 1)
    )
    resumable = make_record(user, recovery_point="order_created")
    for state, expected in [
        ("finished", finished),
        ("in_flight", in_flight),
        ("stale_lock", stale),
        ("resumable", resumable),
    ]:
        page = admin_client.get(reverse(CHANGELIST), {"state": state}).content.decode()
        keys = {r.key for r in (finished, in_flight, stale, resumable)}
        assert [k for k in keys if k in page] == [expected.key], state


@pytest.mark.django_db
def test_admin_detail_is_read_only_and_shows_the_stored_response(admin_client, admin_user):
    key = new_key()
    first = post(client_for(admin_user), key)
    record = IdempotencyRecord.objects.get(key=key)
    url = reverse("admin:resilience_idempotencyrecord_change", args=[record.pk])
    page = admin_client.get(url).content.decode()
    assert "HTTP 201" in page
    assert f"&quot;id&quot;: &quot;{first.json()['id']}&quot;" in page  # pretty-printed JSON
    assert 'name="_save"' not in page  # view only
    assert admin_client.get(reverse("admin:resilience_idempotencyrecord_add")).status_code == 403


@pytest.mark.django_db
def test_admin_actions_purge_expired_and_release_stale_locks(admin_client, user):
    retention = django_settings.IDEMPOTENCY_RETENTION_S
    timeout = django_settings.IDEMPOTENCY_LOCK_TIMEOUT_S
    now = FakeClock().at
    expired = make_record(user, age_s=retention + 10)
    young = make_record(user)
    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": "purge_expired", "_selected_action": [expired.pk, young.pk]},
        follow=True,
    )
    assert "Purged 1 record(s)" in response.content.decode()
    assert set(IdempotencyRecord.objects.values_list("pk", flat=True)) == {young.pk}

    stale = make_record(
        user,
        recovery_point="order_created",
        locked_at=now - timedelta(seconds=timeout + 1),
        lock_token=uuid.uuid4(),
    )
    live = make_record(user, recovery_point="order_created", locked_at=now, lock_token=uuid.uuid4())
    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": "release_stale_locks", "_selected_action": [stale.pk, live.pk]},
        follow=True,
    )
    assert "Released 1 stale lock(s)" in response.content.decode()
    stale.refresh_from_db()
    live.refresh_from_db()
    assert (stale.locked_at, stale.lock_token) == (None, None)
    assert live.locked_at is not None
