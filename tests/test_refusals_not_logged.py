"""A documented refusal is counted, not logged per request (common.exception_handler).

In an outage every request is refused; Django would log each 503 at ERROR on the cores
that answer them. The breaker's transitions, the refusal metrics and the status counts
tell the operator instead (runbooks/DependencyDown.md).
"""

from __future__ import annotations

import pytest

from resilience.breakers import breaker


@pytest.mark.django_db
def test_an_open_breakers_refusal_is_a_503_that_django_does_not_log(auth_client, caplog):
    auth_client.get("/api/v1/orders")  # the token is authenticated once while all is well
    breaker("postgres").open()
    with caplog.at_level("WARNING", logger="django.request"):
        # A page never read: no stale copy to answer with (resilience.stale).
        response = auth_client.get("/api/v1/orders?page_size=7")
    assert response.status_code == 503
    assert response.json()["code"] == "dependency_unavailable"
    assert int(response["Retry-After"]) >= 1
    assert not [r for r in caplog.records if r.name == "django.request"]


@pytest.mark.django_db
def test_an_unexpected_error_is_still_logged(auth_client, caplog, monkeypatch):
    from orders import apis

    def boom(*_args, **_kwargs):
        raise RuntimeError("a bug, not a refusal")

    monkeypatch.setattr(apis.OrderListCreateApi, "get", boom)
    auth_client.raise_request_exception = False
    with caplog.at_level("ERROR", logger="django.request"):
        response = auth_client.get("/api/v1/orders")
    assert response.status_code == 500
    assert [r for r in caplog.records if r.name == "django.request"]
