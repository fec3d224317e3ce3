"""The Python client (client/) against the real server: retries, keys, budget, deadline.

Every test runs gunicorn of the suite on its own port (tests/contract/server.py); faults
are real: a Redis of the test's own killed under the rate limiter, a port where nothing
listens, a socket that accepts and never answers. Timing bounds are generous.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from resilient_client import (
    Client,
    ConflictError,
    DeadlineExceededError,
    RateLimitedError,
    RetryBudget,
    RetryPolicy,
    ServiceUnavailableError,
    TransportError,
    UnprocessableError,
)

from orders.models import Order
from tests.contract.server import ROOMY_POLICIES, api_server
from tests.processes import free_port, redis_server_command, running

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PASSWORD = "correct horse battery"
ITEMS = [{"sku": "BOOK-1", "quantity": 2, "unit_price": 1250}]


def signed_in(base: str, email: str, **kwargs) -> Client:
    api = Client(base, **kwargs)
    api.signup(email, PASSWORD)
    api.login(email, PASSWORD)
    return api


def test_first_session_and_typed_errors(tmp_path):
    with api_server(tmp_path) as base:
        api = signed_in(base, "ada@example.com")
        order = api.create_order("EUR", ITEMS)
        assert order.total_amount == 2500
        assert api.get_order(order.id) == order
        page = api.list_orders(page_size=1)
        assert (page.count, page.results) == (1, [order])
        # Errors are typed and carry the stable code; a 4xx is never retried.
        with pytest.raises(ConflictError) as taken:
            api.signup("ada@example.com", PASSWORD)
        assert taken.value.code == "email_taken"
        assert len(api.last_trace.attempts) == 1
        with pytest.raises(UnprocessableError) as refused:
            api.create_webhook_endpoint("http://10.0.0.1/hook", ["order.paid"])
        assert refused.value.code == "webhook_target_forbidden"
        assert refused.value.status == 422
        assert [a.status for a in api.last_trace.attempts] == [422]
        # A 422 of an idempotency key reused for another body: not retried either.
        api.create_order("EUR", ITEMS, idempotency_key="same-key")
        with pytest.raises(UnprocessableError) as mismatch:
            api.create_order("USD", ITEMS, idempotency_key="same-key")
        assert mismatch.value.code == "idempotency_key_mismatch"
        assert len(api.last_trace.attempts) == 1


def test_503_with_retry_after_is_retried_after_it_with_the_same_key(tmp_path):
    """The limiter's Redis is down: orders_create (made fail-closed here) answers 503
    ``Retry-After: 2``; the client waits about 2 s and retries with the same key."""
    redis_port = free_port()
    policies = {**ROOMY_POLICIES, "orders_create": {**ROOMY_POLICIES["orders_create"],
                                                    "fail": "closed"}}  # fmt: skip
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    redis_cmd = redis_server_command(port=redis_port, workdir=redis_dir)
    env = {
        "RATELIMIT_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "RATELIMIT_UNAVAILABLE_RETRY_AFTER_S": "2",
    }
    attempts = []
    first_refused = threading.Event()

    def seen(attempt):
        attempts.append(attempt)
        if attempt.status == 503:
            first_refused.set()

    # The limiter's Redis is not running yet: sign-up and login (fail-open policies) are
    # served from the local fallback, an order (fail-closed here) gets a 503.
    with api_server(tmp_path, policies=policies, **env) as base:
        api = signed_in(base, "grace@example.com", retry=RetryPolicy(deadline_s=30),
                        on_attempt=seen)  # fmt: skip
        attempts.clear()
        result = {}
        caller = threading.Thread(
            target=lambda: result.update(order=api.create_order("EUR", ITEMS)), daemon=True
        )
        caller.start()
        assert first_refused.wait(timeout=20), attempts
        # Redis comes back while the client waits out Retry-After.
        with running(redis_cmd, env={}, log_path=tmp_path / "redis.log"):
            caller.join(timeout=40)
            assert not caller.is_alive()
    assert "order" in result, attempts
    first, second = attempts[0], attempts[1]
    assert (first.status, first.code, first.retry_after) == (503, "rate_limiter_unavailable", 2)
    waited = second.started_s - (first.started_s + first.elapsed_s)
    assert 1.9 <= waited <= 6, waited
    assert attempts[-1].status == 201
    assert len({a.idempotency_key for a in attempts}) == 1
    assert attempts[0].idempotency_key is not None
    assert Order.objects.count() == 1  # placed once


def test_retry_budget_of_20_percent_holds_under_a_dead_server():
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    budget = RetryBudget(ratio=0.2, reserve=3)
    attempts = []
    api = Client(dead, token="x", budget=budget, on_attempt=attempts.append, seed=1,
                 retry=RetryPolicy(max_attempts=4, base_delay_s=0.005, deadline_s=5))  # fmt: skip
    calls = 50
    for _ in range(calls):
        with pytest.raises(TransportError):
            api.list_orders()
    retries = len(attempts) - calls
    print(f"\nclient under a dead server: {calls} calls, {len(attempts)} requests, "
          f"{retries} retries ({budget.refused} refused by the budget)")  # fmt: skip
    assert all(a.status is None for a in attempts)
    assert 0 < retries <= 0.2 * calls + 3  # without the budget: 3 retries a call, 150
    assert budget.refused > 0


def test_a_call_never_outlives_its_deadline():
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        base = f"http://127.0.0.1:{silent.getsockname()[1]}"
        api = Client(base, token="x", retry=RetryPolicy(deadline_s=1.5, attempt_timeout_s=30))
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            api.list_orders()
        elapsed = time.monotonic() - started
    assert elapsed < 1.5 + 1.5, elapsed


def test_retry_after_past_the_deadline_is_not_waited_for(tmp_path):
    """A 503 whose Retry-After ends after the deadline: give up now, do not sleep."""
    redis_port = free_port()  # the limiter's Redis never runs: every report is a 503
    env = {
        "RATELIMIT_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "RATELIMIT_UNAVAILABLE_RETRY_AFTER_S": "30",
    }
    with api_server(tmp_path, **env) as base:
        api = signed_in(base, "alan@example.com", retry=RetryPolicy(deadline_s=5))
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError) as gave_up:
            api.order_report(days=7)
        elapsed = time.monotonic() - started
    assert isinstance(gave_up.value.last_error, ServiceUnavailableError)
    assert gave_up.value.last_error.code == "rate_limiter_unavailable"
    assert len(api.last_trace.attempts) == 1
    assert elapsed < 5, elapsed


def test_waits_for_the_rate_limit_instead_of_spending_a_refused_request(tmp_path):
    policies = {**ROOMY_POLICIES, "orders_create": {"capacity": 2, "refill_rate": 0.5}}
    with api_server(tmp_path, policies=policies) as base:
        statuses = []
        api = signed_in(base, "edsger@example.com", retry=RetryPolicy(deadline_s=20),
                        on_attempt=lambda a: statuses.append(a.status))  # fmt: skip
        statuses.clear()
        for _ in range(3):
            api.create_order("EUR", ITEMS)
        assert api.last_trace.waited_for_rate_limit_s > 0
        assert statuses == [201, 201, 201]  # no request was spent on a 429
        # A wait that would pass the deadline: refused locally, nothing sent.
        hurried = Client(base, token=api.token, retry=RetryPolicy(deadline_s=0.5))
        hurried.ratelimits = api.ratelimits
        with pytest.raises(RateLimitedError) as local:
            hurried.create_order("EUR", ITEMS)
        assert local.value.problem["client_side"] is True
        assert hurried.last_trace.attempts == []
