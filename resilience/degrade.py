"""Graceful degradation's switch: a documented degraded answer in place of a refusal.

Where a dependency cannot be asked now (:data:`resilience.errors.DEGRADE_ON`), a caller
may answer degraded instead of failing: a stale copy of a read (``resilience.stale``),
an order accepted as ``pending_payment`` and paid by the background, a refund left
``pending``, a token checked against the cache while Postgres is down. Each such
``except`` block starts with :func:`or_raise`, so the pattern has one switch:
``RESILIENCE_ENABLED=False`` (the chaos baseline, the same service without the
patterns) lets the refusal surface as the documented ``503`` it is, as it would without
the degraded answer.
"""

from __future__ import annotations

from django.conf import settings


def or_raise(exc: BaseException) -> None:
    """In an ``except`` block about to answer degraded: re-raise ``exc`` when degraded
    answers are off (only in the baseline without the patterns), else return and let
    the block answer."""
    if not settings.RESILIENCE_ENABLED:
        raise exc
