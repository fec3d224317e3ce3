"""Errors outside the views are problem+json too; request ids travel in and out."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import path

from common.views import server_error  # noqa: F401  (the handler under test)
from tests.problems import assert_problem


def _explode(request):
    raise RuntimeError("boom")


urlpatterns = [path("explode", _explode)]
handler500 = "common.views.server_error"


@pytest.mark.django_db
def test_unknown_url_is_a_problem_document(api_client):
    assert_problem(api_client.get("/api/v1/no-such-thing"), 404, "not_found")


@pytest.mark.urls("tests.test_http_edges")
def test_an_unhandled_error_is_a_problem_document_without_details():
    client = Client(raise_request_exception=False)
    body = assert_problem(client.get("/explode"), 500, "server_error")
    assert "boom" not in str(body)


@pytest.mark.django_db
def test_request_id_is_echoed_or_generated(api_client):
    given = api_client.get("/healthz", HTTP_X_REQUEST_ID="abc-123")
    assert given["X-Request-ID"] == "abc-123"
    hostile = api_client.get("/healthz", HTTP_X_REQUEST_ID="bad id\nInjected: 1")
    assert hostile["X-Request-ID"] != "bad id\nInjected: 1"
    assert len(hostile["X-Request-ID"]) == 32


@pytest.mark.django_db
def test_problem_documents_carry_the_request_id(auth_client):
    response = auth_client.get("/api/v1/orders/report", {"days": "x"}, HTTP_X_REQUEST_ID="trace-42")
    assert assert_problem(response, 400)["request_id"] == "trace-42"


def test_invalid_content_length_is_400():
    client = Client()
    response = client.generic(
        "POST", "/api/v1/auth/signup", b"{}", content_type="application/json", CONTENT_LENGTH="-5"
    )
    assert_problem(response, 400, "invalid_content_length")


@pytest.mark.django_db
def test_an_open_postgres_breaker_outside_drf_is_503_not_500(admin_client):
    """The admin is plain Django: its database errors still become a fast 503."""
    from resilience.breakers import breaker

    admin_client.raise_request_exception = False
    breaker("postgres").force_open()
    try:
        response = admin_client.get("/admin/orders/order/")
    finally:
        breaker("postgres").close()
    body = assert_problem(response, 503, "dependency_unavailable")
    assert body["dependency"] == "postgres"
    assert int(response["Retry-After"]) >= 1
