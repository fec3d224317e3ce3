"""Create every resilience series at zero when a serving process starts.

A labelled counter exists only after its first increment, and in prometheus_client's
multiprocess mode a metric without a child is not exported at all. An alert such as
``rate(resilience_bulkhead_rejected_total[5m]) > 0`` then has nothing to evaluate until
the first rejection, and ``increase()`` misses that first one. Touching each label set
once at start-up makes every series visible at 0 from the first scrape.

Call :func:`preinitialise` only in processes that serve calls (gunicorn workers, Celery
pool processes): it also builds the breakers, whose state gauge each process sets when
it sees a transition. For shared breakers the scrape replaces those values by the state
in Redis (common/metrics_export.py), so a process that saw an opening and then made no
call does not keep the breaker "open" on the dashboard.
"""

from __future__ import annotations

import logging

from resilience import metrics

logger = logging.getLogger(__name__)

# Every reason resilience.retry records when it stops retrying.
GAVE_UP_REASONS = ("attempts", "retry_after_too_long", "deadline", "budget", "not_retryable")
# Every outcome resilience.probes records.
PROBE_OUTCOMES = ("ok", "failed")
# Per-dependency templates (one breaker per webhook host) have no fixed label to create.
TEMPLATES = frozenset({"webhook"})


def preinitialise() -> None:
    """Create the zero series of every configured dependency and build its breaker."""
    from resilience.breakers import known_breakers
    from resilience.policies import all_policies

    for name, policy in all_policies().items():
        if policy.bulkhead is not None and policy.bulkhead.scope == "fleet":
            metrics.BULKHEAD_FALLBACK.labels(name)
        if name in TEMPLATES:
            continue
        metrics.DEADLINE_EXCEEDED.labels(name)
        if policy.breaker is not None:
            metrics.BREAKER_NOT_PERMITTED.labels(name)
            metrics.BREAKER_FAILURES.labels(name)
            metrics.BREAKER_SLOW_CALLS.labels(name)
            metrics.BREAKER_FAILURE_RATE.labels(name).set(0)
            metrics.BREAKER_SLOW_CALL_RATE.labels(name).set(0)
            if policy.breaker.probe is not None:
                for outcome in PROBE_OUTCOMES:
                    metrics.BREAKER_PROBES.labels(name, outcome)
                metrics.BREAKER_PROBE_SECONDS.labels(name)
        if policy.retry is not None:
            metrics.RETRY_ATTEMPTS.labels(name)
            metrics.RETRY_BUDGET_EXHAUSTED.labels(name)
            for reason in GAVE_UP_REASONS:
                metrics.RETRY_GAVE_UP.labels(name, reason)
        if policy.bulkhead is not None:
            metrics.BULKHEAD_IN_USE.labels(name).set(0)
            metrics.BULKHEAD_REJECTED.labels(name)
    _preinitialise_webhooks()
    _preinitialise_concurrency()
    try:
        known_breakers()  # each Breaker sets its state gauge when built
    except Exception:  # metrics must never stop a process from serving
        logger.warning("breaker state gauges not initialised", exc_info=True)


def _preinitialise_concurrency() -> None:
    # Every shed series exists from the first scrape (the LoadSheddingActive alert uses
    # increase()); the latencies read 0 until the first window of requests is measured.
    from resilience.concurrency import PIN_WAIT_OUTCOMES, PRIORITIES, SHED_REASONS, limiter

    for level in PRIORITIES:
        for reason in SHED_REASONS:
            metrics.CONCURRENCY_SHED.labels(level, reason)
    for outcome in PIN_WAIT_OUTCOMES:
        metrics.CONCURRENCY_PIN_WAITS.labels(outcome)
    metrics.CONCURRENCY_LIMIT.set(limiter().limit)
    for window in ("short", "long"):
        metrics.CONCURRENCY_RTT.labels(window).set(0)


def _preinitialise_webhooks() -> None:
    # Publish failures happen only while the broker is down: the series must exist
    # before that for the dashboard and for increase() (paths: webhooks/services.py).
    from webhooks import metrics as webhook_metrics

    for path in ("relay", "sweep", "paused"):
        webhook_metrics.PUBLISH_FAILURES.labels(path)
