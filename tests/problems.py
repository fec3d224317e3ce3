"""Assertions about problem+json answers, shared by the API tests."""

from __future__ import annotations

from typing import Any


def assert_problem(response: Any, status: int, code: str | None = None) -> dict:
    """The response is an RFC 9457 problem document with ``status`` (and ``code``)."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/problem+json"), response["Content-Type"]
    body = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "code"} <= body.keys()
    if code is not None:
        assert body["code"] == code, body
    return body
