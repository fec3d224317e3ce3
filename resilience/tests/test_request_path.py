"""Request path vs background: the latency budget and the read-timeout rule (adr/0007).

Against the real payments simulator: on the request path one call spends at most the
dependency's request budget and never retries a read timeout; a refused connection and
a 503 with a short Retry-After are still retried within the budget. Off the request path
(a Celery task) the same call gets the full read timeout.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests

from conftest import override_policy
from resilience import deadline
from resilience.errors import DependencyUnavailableError
from resilience.http import ResilientSession
from tests.processes import free_port

BODY = {"order_id": "o-rp", "amount": 100, "currency": "EUR"}
BUDGET_S = 0.4


@pytest.fixture
def session(payments, settings):
    override_policy(
        settings,
        "payments",
        timeouts={"read_s": 1.0, "request_budget_s": BUDGET_S},
        retry={"base_s": 0.001, "cap_s": 0.002, "budget_min_retries": 100},
        breaker={"fail_max": 1000},
    )
    return ResilientSession("payments")


@contextmanager
def raises_unreachable(cause: type[BaseException]) -> Iterator[None]:
    """The client's refusal, caused by ``cause`` (what the policies gave up on)."""
    with pytest.raises(DependencyUnavailableError) as caught:
        yield
    assert isinstance(caught.value.__cause__, cause), repr(caught.value.__cause__)


def authorize(session: ResilientSession) -> requests.Response:
    return session.request("POST", "/authorizations", json=BODY, idempotency_key="k-rp")


def test_on_the_request_path_a_read_timeout_is_not_retried_and_fits_the_budget(session, payments):
    payments.set_faults(latency_ms=800)
    started = time.perf_counter()
    with deadline.request_path(5.0), raises_unreachable(requests.ReadTimeout):
        authorize(session)
    took = time.perf_counter() - started
    assert payments.stats()["requests"] == 1  # one attempt, no retry of the read timeout
    assert BUDGET_S - 0.05 <= took < BUDGET_S + 0.25  # the budget, not the 1 s read timeout


def test_the_request_deadline_still_clips_a_larger_budget(session, payments):
    payments.set_faults(latency_ms=800)
    started = time.perf_counter()
    with deadline.request_path(0.15), raises_unreachable(requests.ReadTimeout):
        authorize(session)
    assert time.perf_counter() - started < BUDGET_S


def test_off_the_request_path_the_call_gets_the_full_read_timeout(session, payments):
    payments.set_faults(latency_ms=700)
    started = time.perf_counter()
    response = authorize(session)  # no request_path(): a background call
    assert response.status_code == 201
    assert time.perf_counter() - started >= 0.7


def test_off_the_request_path_a_read_timeout_is_retried(session, payments, settings):
    override_policy(settings, "payments", timeouts={"read_s": 0.2})
    payments.set_faults(latency_ms=400)
    with raises_unreachable(requests.ReadTimeout):
        ResilientSession("payments").request(
            "POST", "/authorizations", json=BODY, idempotency_key="k-bg"
        )
    assert payments.stats()["requests"] == 3  # max_attempts: the background may wait


def test_on_the_request_path_a_short_retry_after_503_is_retried_within_the_budget(
    session, payments
):
    payments.set_faults(fail_first_n=1, error_status=503, retry_after=0)
    with deadline.request_path(5.0):
        response = authorize(session)
    assert response.status_code == 201
    assert payments.stats()["requests"] == 2


def test_on_the_request_path_a_retry_after_beyond_the_budget_ends_the_call(session, payments):
    payments.set_faults(fail_first_n=1, error_status=503, retry_after=1)  # 1 s > 0.4 s budget
    started = time.perf_counter()
    with deadline.request_path(5.0), pytest.raises(Exception, match="503"):
        authorize(session)
    assert payments.stats()["requests"] == 1
    assert time.perf_counter() - started < BUDGET_S


def test_on_the_request_path_a_refused_connection_is_retried(settings):
    override_policy(
        settings,
        "payments",
        base_url=f"http://127.0.0.1:{free_port()}",  # nothing listens: connection refused
        timeouts={"request_budget_s": BUDGET_S},
        retry={"base_s": 0.001, "cap_s": 0.002, "budget_min_retries": 100},
        breaker={"fail_max": 1000},
    )
    attempts: list[float] = []
    client = ResilientSession("payments")
    real = client._session

    def counting():
        attempts.append(time.perf_counter())
        return real()

    client._session = counting
    with deadline.request_path(5.0), raises_unreachable(requests.ConnectionError):
        authorize(client)
    assert len(attempts) == 3  # every attempt fitted in the budget


@pytest.mark.django_db(transaction=True)
def test_a_thread_waiting_on_a_dependency_holds_no_database_connection(session, payments):
    """The pool is shared by the threads: a slow provider must not hold its connections."""
    import threading

    from django.db import connections

    from accounts.models import User

    payments.set_faults(latency_ms=300)
    User.objects.count()  # this thread now has a pooled connection checked out
    pool = connections["default"].pool
    assert connections["default"].connection is not None
    during: dict[str, int] = {}

    def look() -> None:
        stats = pool.get_stats()
        during["in_use"] = stats["pool_size"] - stats["pool_available"]

    probe = threading.Timer(0.15, look)
    probe.start()
    with deadline.request_path(5.0):
        assert authorize(session).status_code == 201
    probe.join(5)
    assert during["in_use"] == 0  # given back while payments took its time
    assert connections["default"].connection is None
    assert User.objects.count() >= 0  # and the next query simply checks one out again
