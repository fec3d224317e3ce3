"""Shared helpers of the idempotency tests (plain functions, no fixtures)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from resilience.tests import idempotency_views as views

URLS = "resilience.tests.idempotency_urls"
URL = "/test/idem/orders"
BODY = {"currency": "EUR", "amount": 1250}


def new_key() -> str:
    return f"test-{uuid.uuid4()}"


def post(client: Any, key: str | None = None, body: Any = BODY, url: str = URL) -> Any:
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return client.post(url, body, format="json", **headers)


def reset_test_views() -> None:
    views.FAULTS.clear()
    views.AUTHORIZATIONS.clear()


def authorizations_for(order_id: Any) -> list[str]:
    return [key for oid, key in views.AUTHORIZATIONS if oid == str(order_id)]


class FakeClock:
    """A clock the test moves by hand: ``clock.advance(seconds=61)``."""

    def __init__(self, start: datetime | None = None) -> None:
        self.at = start or timezone.now()

    def __call__(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)
