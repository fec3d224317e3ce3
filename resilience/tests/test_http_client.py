"""The resilient HTTP client against a real HTTP server (the payments simulator)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from conftest import override_policy
from resilience.errors import DownstreamHTTPError
from resilience.http import ResilientSession, parse_retry_after

BODY = {"order_id": "o-1", "amount": 100, "currency": "EUR"}


@pytest.fixture
def session(payments, settings):
    override_policy(
        settings, "payments", retry={"base_s": 0.001, "cap_s": 0.002, "budget_min_retries": 100}
    )
    waits: list[float] = []
    client = ResilientSession("payments", sleep=waits.append)
    client.waits = waits
    return client


def test_a_call_site_cannot_choose_or_drop_the_timeout(session):
    with pytest.raises(TypeError, match="timeouts come from the dependency's policy"):
        session.request("GET", "/healthz", timeout=None)


def test_a_dependency_without_read_timeout_gets_no_client(settings):
    override_policy(settings, "payments", timeouts={"connect_s": 0.5, "read_s": None})
    with pytest.raises(ValueError, match="no read timeout"):
        ResilientSession("payments")


def test_a_post_with_an_idempotency_key_is_retried_on_503(session, payments):
    payments.set_faults(fail_first_n=2, error_status=503, retry_after=0)
    response = session.request("POST", "/authorizations", json=BODY, idempotency_key="k-1")
    assert response.status_code == 201
    assert payments.stats()["requests"] == 3
    assert payments.stats()["authorizations"] == 1


def test_a_post_without_a_key_is_never_retried(session, payments):
    payments.set_faults(fail_first_n=1, error_status=503, retry_after=0)
    with pytest.raises(DownstreamHTTPError) as failure:
        session.request("POST", "/authorizations", json=BODY, headers={"Idempotency-Key": "x"})
    assert failure.value.downstream_status == 503
    assert payments.stats()["requests"] == 1


def test_other_4xx_answers_are_returned_not_retried_and_do_not_trip_the_breaker(session, payments):
    from resilience.breakers import breaker

    for _ in range(10):  # more than fail_max
        response = session.request(
            "POST", "/authorizations", json={"amount": -1}, idempotency_key="bad"
        )
        assert response.status_code == 400
    assert payments.stats()["requests"] == 10
    assert breaker("payments").current_state == "closed"


def test_500_counts_for_the_breaker_but_is_not_retried(session, payments):
    payments.set_faults(error_rate=1.0, error_status=500)
    with pytest.raises(DownstreamHTTPError):
        session.request("POST", "/authorizations", json=BODY, idempotency_key="k-2")
    assert payments.stats()["requests"] == 1


def test_retry_after_is_honoured(session, payments):
    payments.set_faults(fail_first_n=1, error_status=429, retry_after=1)
    assert (
        session.request("POST", "/authorizations", json=BODY, idempotency_key="k-3").status_code
        == 201
    )
    assert session.waits == [1.0]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3.0), ("0", 0.0), ("", None), (None, None), ("soon", None), ("-1", None)],
)
def test_parse_retry_after_seconds(value, expected):
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date():
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now=now) == 30.0
    earlier = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(earlier, now=now) == 0.0
