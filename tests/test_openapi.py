"""The OpenAPI schema validates and documents every endpoint; docs are served."""

from __future__ import annotations

import pytest
from django.core.management import call_command


def test_schema_validates_without_warnings(tmp_path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    schema = out.read_text()
    for route in (
        "/api/v1/auth/signup",
        "/api/v1/auth/login",
        "/api/v1/orders",
        "/api/v1/orders/report",
        "/api/v1/orders/{order_id}",
    ):
        assert f"{route}:" in schema


@pytest.mark.django_db
def test_docs_page_is_served(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger" in response.content.lower()
