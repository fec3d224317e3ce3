"""Prometheus metrics of webhook delivery (catalogue: docs/metrics.md, runbooks/).

Counters and histograms are incremented by the worker that decides; the gauges are
computed from Postgres when ``/metrics`` is scraped (:func:`refresh_gauges`), so they
are right whichever process answers the scrape. Per-host breaker state is
``resilience_breaker_state{dependency="webhook:<host>"}``.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

logger = logging.getLogger(__name__)

EVENTS_EMITTED = Counter(
    "webhooks_events_emitted_total",
    "Events written to the outbox with at least one subscribed endpoint.",
    ["type"],
)
DELIVERIES = Counter(
    "webhooks_deliveries_total",
    "Delivery attempts by outcome: succeeded, retry, dead, gone, failed, forbidden, and"
    " deferred (breaker open or bulkhead full: no attempt spent).",
    ["outcome"],
)
ATTEMPTS_PER_DELIVERY = Histogram(
    "webhooks_delivery_attempts",
    "Attempts a delivery took until it succeeded, was dead-lettered or failed.",
    ["status"],
    buckets=(1, 2, 3, 4, 6, 8, 10, 12, 16, 20),
)
DEAD_LETTERED = Counter(
    "webhooks_dead_lettered_total", "Deliveries dead-lettered (attempts exhausted or refused)."
)
PUBLISH_FAILURES = Counter(
    "webhooks_publish_failures_total",
    "Deliveries the relay could not hand to the broker (left for the sweep).",
    ["path"],
)
OUTBOX_LAG = Gauge(
    "webhooks_outbox_lag_seconds",
    "How late the most overdue pending delivery is (0 when none is due): grows while the"
    " broker is down or the webhooks queue is backed up.",
    multiprocess_mode="livemostrecent",
)
PENDING = Gauge(
    "webhooks_deliveries_pending",
    "Deliveries waiting for an attempt (due now or scheduled).",
    multiprocess_mode="livemostrecent",
)
DEAD = Gauge(
    "webhooks_dead_letters",
    "Dead-lettered deliveries waiting for a replay.",
    multiprocess_mode="livemostrecent",
)


def refresh_gauges() -> None:
    """Recompute the gauges from Postgres (two indexed queries); never fails a scrape."""
    from webhooks import selectors

    try:
        stats = selectors.delivery_backlog()
    except Exception as exc:  # noqa: BLE001 - DatabaseError, the postgres breaker's refusal...
        # A scrape must answer while Postgres is down: the gauges keep their last value.
        logger.warning("webhook gauges not refreshed", extra={"error": type(exc).__name__})
        return
    OUTBOX_LAG.set(stats.lag_s)
    PENDING.set(stats.pending)
    DEAD.set(stats.dead)


def on_request_started(sender: Any, environ: dict | None = None, **_: Any) -> None:
    """``request_started`` receiver: refresh the gauges just before ``/metrics`` renders."""
    if environ and environ.get("PATH_INFO", "").rstrip("/") == "/metrics":
        refresh_gauges()
