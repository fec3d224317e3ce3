"""Liveness never touches dependencies; readiness is "can answer" (adr/0009)."""

from __future__ import annotations

import pytest

from resilience.breakers import breaker
from tests.processes import free_port


def test_healthz_is_always_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_reports_each_dependency(client):
    body = client.get("/readyz").json()
    assert body["status"] == "ready"
    assert body["checks"]["postgres"]["ok"] is True
    assert body["checks"]["redis"]["ok"] is True


@pytest.mark.django_db
def test_redis_down_is_degraded_not_unready(client, settings):
    """A refused Redis port: still ready (cache bypass is a documented degraded mode)."""
    _redis_refused(settings)
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "degraded"
    assert body["degraded"] == ["redis"]
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["redis"]["latency_ms"] < 1000


def _redis_refused(settings) -> None:
    location = f"redis://127.0.0.1:{free_port()}/0"
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "LOCATION": location},
    }


@pytest.mark.django_db
def test_postgres_down_is_degraded_not_unready(client):
    """Postgres unavailable (its breaker open): stale reads and fast 503s are still answers."""
    breaker("postgres").force_open()
    try:
        response = client.get("/readyz")
    finally:
        breaker("postgres").close()
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "degraded"
    assert body["degraded"] == ["postgres"]
    assert body["checks"]["postgres"]["ok"] is False
    assert body["checks"]["redis"]["ok"] is True


@pytest.mark.django_db
def test_no_answer_source_left_is_503_with_retry_after(client, settings):
    """Postgres and Redis both unavailable: nothing but refusals, so out of rotation."""
    _redis_refused(settings)
    breaker("postgres").force_open()
    try:
        response = client.get("/readyz")
    finally:
        breaker("postgres").close()
    body = response.json()
    assert response.status_code == 503
    assert response["Retry-After"] == str(settings.API_UNAVAILABLE_RETRY_AFTER_S)
    assert body["status"] == "unavailable"
    assert body["degraded"] == ["postgres", "redis"]
    assert not body["checks"]["postgres"]["ok"]
    assert not body["checks"]["redis"]["ok"]


@pytest.mark.django_db
def test_the_answer_sources_are_a_setting(client, settings):
    """With only Postgres as a source, Postgres down is unready (the previous meaning)."""
    settings.HEALTH_ANSWER_SOURCES = ["postgres"]
    breaker("postgres").force_open()
    try:
        response = client.get("/readyz")
    finally:
        breaker("postgres").close()
    assert response.status_code == 503
