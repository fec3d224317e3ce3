"""/readyz lists every breaker's state and counts an open one as a degraded mode."""

from __future__ import annotations

import pytest

from resilience.breakers import breaker

pytestmark = pytest.mark.django_db


def test_readyz_lists_every_configured_breaker_closed(client):
    body = client.get("/readyz").json()
    assert body["degraded"] == []
    assert {"postgres", "redis", "payments"} <= set(body["breakers"])
    assert body["breakers"]["payments"] == {"state": "closed", "reopens_in_s": 0.0}


def test_an_open_breaker_is_listed_with_its_reopen_time_and_makes_a_degraded_mode(client):
    breaker("payments").open()
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200  # payments down: orders deferred, still serving
    assert body["status"] == "degraded"
    assert body["degraded"] == ["payments"]
    assert body["breakers"]["payments"]["state"] == "open"
    reset_timeout = breaker("payments").reset_timeout
    assert 0 < body["breakers"]["payments"]["reopens_in_s"] <= reset_timeout


def test_a_forced_open_breaker_stays_degraded_until_closed(client):
    breaker("payments").force_open()
    assert client.get("/readyz").json()["degraded"] == ["payments"]
    breaker("payments").close()
    body = client.get("/readyz").json()
    assert body["degraded"] == []
    assert body["breakers"]["payments"] == {"state": "closed", "reopens_in_s": 0.0}


def test_an_open_postgres_breaker_is_degraded_not_unready(client):
    breaker("postgres").open()
    try:
        response = client.get("/readyz")
    finally:
        breaker("postgres").close()
    body = response.json()
    assert body["breakers"]["postgres"]["state"] == "open"
    assert response.status_code == 200  # stale reads from Redis, fast 503s for the rest
    assert body["status"] == "degraded"
    assert body["degraded"] == ["postgres"]
