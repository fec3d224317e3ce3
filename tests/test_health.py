"""Liveness never touches dependencies; readiness checks each with short timeouts."""

from __future__ import annotations

import pytest

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
    location = f"redis://127.0.0.1:{free_port()}/0"
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "LOCATION": location},
    }
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200
    assert body["degraded"] == ["redis"]
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["redis"]["latency_ms"] < 1000


@pytest.mark.django_db
def test_a_critical_dependency_down_is_503_with_retry_after(client, settings, monkeypatch):
    from common import views

    def refused():
        raise ConnectionRefusedError

    monkeypatch.setitem(views.READINESS_CHECKS, "postgres", refused)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response["Retry-After"] == str(settings.API_UNAVAILABLE_RETRY_AFTER_S)
    assert response.json()["checks"]["postgres"] == {
        "ok": False,
        "error": "ConnectionRefusedError",
        "latency_ms": response.json()["checks"]["postgres"]["latency_ms"],
    }
