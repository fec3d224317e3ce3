"""Prometheus metrics of orders (catalogue: docs/metrics.md).

The gauge is computed from Postgres when ``/metrics`` is scraped (like the webhook
gauges), so any web process answering the scrape reports the fleet's backlog.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Gauge

logger = logging.getLogger(__name__)

PENDING_PAYMENT_OLDEST = Gauge(
    "orders_pending_payment_oldest_seconds",
    "Age of the oldest order still pending_payment (0 when none): grows while payments"
    " is down or deferred authorisation does not run.",
    multiprocess_mode="livemostrecent",
)


def refresh_gauges() -> None:
    """Recompute the gauge (one query on the partial index); never fails a scrape."""
    from orders.selectors import pending_payment_oldest_age_s

    try:
        age = pending_payment_oldest_age_s()
    except Exception as exc:  # noqa: BLE001 - DatabaseError, the postgres breaker's refusal...
        logger.warning("orders gauges not refreshed", extra={"error": type(exc).__name__})
        return
    PENDING_PAYMENT_OLDEST.set(age)


def on_request_started(sender: Any, environ: dict | None = None, **_: Any) -> None:
    """``request_started`` receiver: refresh the gauge just before ``/metrics`` renders."""
    if environ and environ.get("PATH_INFO", "").rstrip("/") == "/metrics":
        refresh_gauges()
