"""Concurrent requests with one key, on real concurrent Postgres connections.

Each thread has its own Django connection (so its own transaction), taken from the
``default`` pool, exactly like gunicorn's gthread workers.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
from django.db import connections
from rest_framework.authtoken.models import Token

from orders.models import Order
from resilience.idempotency import override_clock
from resilience.models import IdempotencyRecord
from resilience.tests import idempotency_views as views
from resilience.tests.idempotency_helpers import (
    URLS,
    FakeClock,
    authorizations_for,
    new_key,
    post,
    reset_test_views,
)
from tests.concurrency import JOIN_TIMEOUT_S, client_with_token, run_threads
from tests.processes import wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.urls(URLS),
    pytest.mark.usefixtures("no_load_shedding"),
]

CONCURRENCY = 50


@pytest.fixture(autouse=True)
def _clean_test_views():
    reset_test_views()
    yield
    reset_test_views()


def test_fifty_concurrent_identical_requests_make_exactly_one_order(user, wide_request_pool):
    token = Token.objects.create(user=user).key
    key = new_key()
    start = threading.Barrier(CONCURRENCY, timeout=JOIN_TIMEOUT_S)
    conflict_served = threading.Event()
    # The first request holds its lock until a duplicate has been answered 409 (or 10 s
    # pass), so the test always sees both answers a duplicate can get.
    views.FAULTS["after_order_created"] = lambda: conflict_served.wait(timeout=10)

    def attempt(_: int) -> tuple[int, str | None, bytes, str | None]:
        client = client_with_token(token)
        start.wait()
        response = post(client, key)
        if response.status_code == 409:
            conflict_served.set()
        return (
            response.status_code,
            response.get("Idempotent-Replayed"),
            response.content,
            response.get("Retry-After"),
        )

    results = run_threads(CONCURRENCY, attempt)
    by_answer = Counter(
        "first" if (status, replayed) == (201, None) else f"{status}/{replayed}"
        for status, replayed, _, _ in results
    )
    print(f"answers to {CONCURRENCY} concurrent requests: {dict(by_answer)}")
    assert set(by_answer) <= {"first", "201/true", "409/None"}, by_answer
    assert by_answer["first"] == 1
    assert by_answer["409/None"] >= 1
    assert all(retry_after for status, _, _, retry_after in results if status == 409)
    (first_body,) = [
        body for status, replayed, body, _ in results if (status, replayed) == (201, None)
    ]
    assert all(body == first_body for status, _, body, _ in results if status == 201)

    orders = list(Order.objects.filter(owner=user))
    assert len(orders) == 1
    assert len(authorizations_for(orders[0].id)) == 1
    assert IdempotencyRecord.objects.get(principal=user, key=key).recovery_point == "finished"

    # Every client that got 409 retries once and now gets the stored answer.
    retried = run_threads(by_answer["409/None"], lambda _: post(client_with_token(token), key))
    assert {(r.status_code, r["Idempotent-Replayed"]) for r in retried} == {(201, "true")}
    assert all(r.content == first_body for r in retried)
    assert Order.objects.filter(owner=user).count() == 1


def test_an_overtaken_request_cannot_commit_its_phase(user, settings, wide_request_pool):
    """A slow first request whose lock expired is fenced off by the lock token."""
    token = Token.objects.create(user=user).key
    key = new_key()
    clock = FakeClock()
    release_first = threading.Event()
    calls = Counter()
    calls_lock = threading.Lock()

    def hold_only_the_first_request() -> None:
        with calls_lock:
            calls["after_order_created"] += 1
            first = calls["after_order_created"] == 1
        if first:
            release_first.wait(timeout=JOIN_TIMEOUT_S)

    views.FAULTS["after_order_created"] = hold_only_the_first_request
    results: list[Any] = []

    def slow_request() -> None:
        try:
            results.append(post(client_with_token(token), key))
        finally:
            connections.close_all()

    with override_clock(clock):
        slow = threading.Thread(target=slow_request, daemon=True)
        slow.start()
        wait_for(
            lambda: IdempotencyRecord.objects.filter(
                principal=user, key=key, recovery_point="order_created"
            ).exists(),
            timeout=10,
            what="the first request to finish phase 1",
        )
        client = client_with_token(token)
        assert post(client, key).status_code == 409  # still in flight

        clock.advance(seconds=settings.IDEMPOTENCY_LOCK_TIMEOUT_S + 1)
        taken_over = post(client, key)  # resumes from order_created and finishes
        assert taken_over.status_code == 201, taken_over.content
        assert "Idempotent-Replayed" not in taken_over

        release_first.set()  # the slow request wakes up and tries phase 2
        slow.join(timeout=JOIN_TIMEOUT_S)
        assert not slow.is_alive()
    connections.close_all()

    (late,) = results
    # Its phase-2 transaction rolled back (lock lost); it answers with the stored result.
    assert late.status_code == 201
    assert late["Idempotent-Replayed"] == "true"
    assert late.content == taken_over.content
    order = Order.objects.get(owner=user)
    assert order.status == "paid"
    # Two calls reached "payments", both with the key derived from the order, so the
    # provider charges once (the lead's payments service dedupes on that key).
    assert set(authorizations_for(order.id)) == {f"order-{order.id}-authorize"}
