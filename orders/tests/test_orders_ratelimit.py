"""Per-user limits on order creation and the report; the report fails closed."""

from __future__ import annotations

import pytest

from conftest import client_for
from resilience.ratelimit.errors import REDUCED_CAPACITY_TYPE
from tests.problems import assert_problem
from tests.processes import free_port
from tests.ratelimit_support import ratelimit_settings

pytestmark = pytest.mark.django_db

ORDERS = "/api/v1/orders"
REPORT = "/api/v1/orders/report"
VALID = {"currency": "EUR", "items": [{"sku": "abc", "quantity": 2, "unit_price": 1250}]}


@pytest.mark.usefixtures("payments")
def test_order_creation_is_limited_per_user_and_listing_is_not(
    settings, make_user, limiter_with_clock, fake_clock
):
    ratelimit_settings(settings, policies={"orders_create": {"capacity": 2, "refill_rate": 0.5}})
    alice, bob = (client_for(make_user()[0]) for _ in range(2))
    for _ in range(2):
        assert alice.post(ORDERS, VALID, format="json").status_code == 201
    response = alice.post(ORDERS, VALID, format="json")
    body = assert_problem(response, 429, "rate_limited")
    assert body["violated-policies"] == ["orders_create"]
    assert int(response["Retry-After"]) == 2
    # Other users have their own bucket; reading is not limited by this policy.
    assert bob.post(ORDERS, VALID, format="json").status_code == 201
    for _ in range(5):
        assert alice.get(ORDERS).status_code == 200
    fake_clock.advance(2)
    assert alice.post(ORDERS, VALID, format="json").status_code == 201


def test_the_report_has_a_tight_per_user_limit(settings, make_user, limiter_with_clock):
    ratelimit_settings(settings, policies={"orders_report": {"capacity": 2, "refill_rate": 1 / 30}})
    alice, bob = (client_for(make_user()[0]) for _ in range(2))
    assert alice.get(REPORT).status_code == 200
    assert alice.get(REPORT).status_code == 200
    response = alice.get(REPORT)
    assert_problem(response, 429, "rate_limited")
    assert int(response["Retry-After"]) == 30
    assert bob.get(REPORT).status_code == 200


def test_the_report_fails_closed_while_the_limiter_cannot_reach_redis(settings, auth_client):
    ratelimit_settings(
        settings,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    response = auth_client.get(REPORT)
    body = assert_problem(response, 503, "rate_limiter_unavailable")
    assert body["type"] == REDUCED_CAPACITY_TYPE
    assert body["violated-policies"] == ["orders_report"]
    retry_after = settings.RESILIENCE_RATELIMIT["unavailable_retry_after_s"]
    assert int(response["Retry-After"]) == retry_after
    # Fail-open policies keep serving, limited by the per-process fallback bucket.
    assert auth_client.get("/api/v1/auth/me").status_code == 200


def test_a_dry_run_report_limit_refuses_nothing(settings, auth_client):
    ratelimit_settings(
        settings,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        policies={"orders_report": {"dry_run": True}},
    )
    assert auth_client.get(REPORT).status_code == 200
