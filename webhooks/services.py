"""Writes for webhooks: endpoints, the transactional outbox, its relay and delivery.

How an event travels (adr/0006, docs/patterns/bulkhead.md):

1. :func:`outbox_emit` runs inside the caller's transaction. It writes the event and one
   :class:`Delivery` per subscribed endpoint (fan-out at emit time), due now. If the
   transaction rolls back, nothing was emitted; if it commits, nothing can be lost.
2. After commit, :func:`deliveries_publish` hands the new deliveries to the ``webhooks``
   queue. If the broker is down, they simply stay due in Postgres.
3. :func:`outbox_sweep` (beat, every few seconds, on worker-default) publishes every due
   delivery that is not in the queue: left behind while the broker was down, or
   rescheduled after a failed attempt. It is also the dispatcher of the retry schedule,
   which lives in ``next_attempt_at``, never in broker countdowns (Redis' visibility
   timeout would redeliver an hour-long countdown again and again).
4. :func:`delivery_attempt` (worker-webhooks, ``background`` alias) claims the row with a
   conditional UPDATE and commits, then makes one signed POST with no transaction open,
   then records the outcome in a new transaction, under its claim.

Delivery is at least once; receivers dedupe on ``webhook-id`` (the event id).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from resilience.db_routing import current_alias
from resilience.errors import (
    BreakerOpenError,
    BulkheadFullError,
    DependencyUnavailableError,
    DownstreamHTTPError,
)
from resilience.policies import uses_dependency
from resilience.problems import ConflictError, NotFoundError, UnprocessableError
from resilience.publish import publish
from resilience.ssrf import (
    FORBIDDEN_ADDRESS_ERRORS,
    REQUEST_ERRORS,
    ForbiddenTargetError,
    ResolutionTimeoutError,
    check_target,
    guarded_client,
)
from webhooks import metrics
from webhooks.models import Delivery, DeliveryAttempt, DeliveryStatus, Endpoint, OutboxEvent

logger = logging.getLogger(__name__)

PING_EVENT = "webhook.ping"
SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks prefix, not a secret
# Answers that mean "try again later" although they are 4xx. Every other 4xx (and any
# 3xx: redirects are never followed) is dead-lettered at once: the receiver refused this
# request as such, and the same bytes would be refused again (DESIGN: never retry 4xx).
# A receiver that fixes its side replays from the dead letters.
RETRYABLE_4XX = frozenset({408, 425, 429})


class WebhookTargetForbiddenError(UnprocessableError):
    code = "webhook_target_forbidden"
    title = "Webhook URL not allowed"


class WebhookEndpointLimitError(UnprocessableError):
    code = "webhook_endpoint_limit"
    title = "Too many webhook endpoints"


class WebhookReplayError(ConflictError):
    code = "webhook_replay_refused"
    title = "Delivery cannot be replayed"


# --- Endpoints --------------------------------------------------------------------------


def generate_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signing_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret (the bytes after the prefix, base64-decoded)."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(*, secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` (Standard Webhooks)."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def ensure_target_allowed(url: str) -> None:
    """Raise the 422 of :class:`WebhookTargetForbiddenError` unless ``url`` may be called."""
    try:
        check_target(url, allowed=settings.WEBHOOKS_ALLOWED_TARGETS)
    except ForbiddenTargetError as exc:
        raise WebhookTargetForbiddenError(exc.detail, extra={"reason": exc.reason}) from exc


def endpoint_create(*, owner: Any, url: str, event_types: Sequence[str]) -> Endpoint:
    """Register an endpoint with a new signing secret (returned once, by the API)."""
    ensure_target_allowed(url)
    with transaction.atomic(using=current_alias()):
        active = Endpoint.objects.select_for_update().filter(owner=owner, is_active=True)
        if len(active) >= settings.WEBHOOKS_MAX_ENDPOINTS_PER_USER:
            raise WebhookEndpointLimitError(
                f"At most {settings.WEBHOOKS_MAX_ENDPOINTS_PER_USER} active endpoints per user."
            )
        return Endpoint.objects.create(
            owner=owner,
            url=url,
            event_types=sorted(set(event_types)),
            secret=generate_secret(),
        )


def endpoint_delete(*, owner: Any, endpoint_id: Any) -> None:
    """Deactivate the endpoint (its delivery history stays) and drop what it had pending."""
    from webhooks.selectors import endpoint_get

    with transaction.atomic(using=current_alias()):
        endpoint = endpoint_get(owner=owner, endpoint_id=endpoint_id)
        _disable(endpoint, reason="deleted")


def _disable(endpoint: Endpoint, *, reason: str) -> None:
    now = timezone.now()
    Endpoint.objects.filter(id=endpoint.id).update(
        is_active=False, disabled_reason=reason, disabled_at=now
    )
    Delivery.objects.filter(endpoint_id=endpoint.id, status=DeliveryStatus.PENDING).update(
        status=DeliveryStatus.FAILED,
        last_error=f"endpoint disabled ({reason})",
        next_attempt_at=None,
        lease_id=None,
        updated_at=now,
    )


def endpoint_ping(*, owner: Any, endpoint_id: Any) -> Delivery:
    """Send a ``webhook.ping`` event to one endpoint (whatever types it subscribed to)."""
    from webhooks.selectors import endpoint_get

    with transaction.atomic(using=current_alias()):
        endpoint = endpoint_get(owner=owner, endpoint_id=endpoint_id)
        if not endpoint.is_active:
            raise UnprocessableError("The endpoint is disabled; register it again.")
        event = outbox_emit(
            event_type=PING_EVENT,
            payload={"endpoint_id": str(endpoint.id)},
            owner=owner,
            endpoints=[endpoint],
        )
        assert event is not None  # one explicit endpoint: always emitted
        return Delivery.objects.select_related("event").get(event=event, endpoint=endpoint)


# --- The outbox -------------------------------------------------------------------------


def outbox_emit(
    *,
    event_type: str,
    payload: dict[str, Any],
    owner: Any,
    dedupe_key: str | None = None,
    endpoints: Iterable[Endpoint] | None = None,
) -> OutboxEvent | None:
    """Stage ``event_type`` for every subscribed endpoint, in the caller's transaction.

    Returns None (and writes nothing) when no active endpoint of ``owner`` subscribes to
    the type, or when an event with the same ``dedupe_key`` exists already. Publishing to
    the broker happens only after the caller's transaction commits.
    """
    alias = current_alias()
    if not transaction.get_connection(alias).in_atomic_block:
        raise RuntimeError("outbox_emit must run inside the caller's transaction")
    owner_id = getattr(owner, "pk", owner)
    if endpoints is None:
        endpoints = Endpoint.objects.filter(
            owner_id=owner_id, is_active=True, event_types__contains=[event_type]
        )
    targets = list(endpoints)
    if not targets:
        return None
    now = timezone.now()
    event = OutboxEvent(
        type=event_type,
        owner_id=owner_id,
        payload={"type": event_type, "timestamp": now.isoformat(), "data": payload},
        dedupe_key=dedupe_key,
    )
    try:
        with transaction.atomic(using=alias):  # a savepoint: a duplicate leaves the rest
            event.save(force_insert=True)
    except IntegrityError:
        if dedupe_key and OutboxEvent.objects.filter(dedupe_key=dedupe_key).exists():
            return None
        raise
    deliveries = Delivery.objects.bulk_create(
        [Delivery(event=event, endpoint=target, next_attempt_at=now) for target in targets]
    )
    ids = [delivery.id for delivery in deliveries]
    transaction.on_commit(lambda: deliveries_publish(ids), using=alias, robust=True)
    metrics.EVENTS_EMITTED.labels(event_type).inc()
    return event


# Process-local: after a failed publish the request path stops trying for a short while
# (each try can cost a second against a dead broker); the sweep publishes what waits.
_publish_paused_until = 0.0


def deliveries_publish(delivery_ids: Sequence[Any], *, from_sweep: bool = False) -> list[Any]:
    """Hand deliveries to the ``webhooks`` queue; return the ids that were published.

    Never raises for a broker failure: what was not published stays due in Postgres
    and the sweep publishes it later.
    """
    global _publish_paused_until  # noqa: PLW0603 - one pause switch per process
    from webhooks.tasks import deliver

    if not from_sweep and time.monotonic() < _publish_paused_until:
        metrics.PUBLISH_FAILURES.labels("paused").inc(len(delivery_ids))
        return []
    published = []
    for delivery_id in delivery_ids:
        try:
            publish(deliver, args=[str(delivery_id)])  # bounded by the request's deadline
        except Exception as exc:  # noqa: BLE001 - kombu/redis raise many types; all mean "not now"
            _publish_paused_until = time.monotonic() + settings.WEBHOOKS_PUBLISH_PAUSE_S
            left = len(delivery_ids) - len(published)
            metrics.PUBLISH_FAILURES.labels("sweep" if from_sweep else "relay").inc(left)
            logger.warning(
                "webhook deliveries not published; the sweep will retry",
                extra={"error": type(exc).__name__, "left": left},
            )
            break
        published.append(delivery_id)
    if published and not from_sweep:
        Delivery.objects.filter(
            id__in=published, status=DeliveryStatus.PENDING, lease_id__isnull=True
        ).update(enqueued_at=timezone.now())
    return published


def outbox_sweep(*, limit: int | None = None) -> int:
    """Publish due deliveries that are not in the queue; return how many were published.

    Due means ``next_attempt_at <= now``: new ones the relay could not publish, retries
    whose time has come, and attempts whose worker died (their lease ran out). A row
    already published is published again only after ``WEBHOOKS_REDISPATCH_AFTER_S`` (its
    message may have been lost with a Redis that restarted empty).
    """
    limit = limit or settings.WEBHOOKS_SWEEP_BATCH
    now = timezone.now()
    stale = now - timedelta(seconds=settings.WEBHOOKS_REDISPATCH_AFTER_S)
    alias = current_alias()
    with transaction.atomic(using=alias):
        # SKIP LOCKED: two sweeps never publish the same rows; workers' claims never wait.
        ids = list(
            Delivery.objects.select_for_update(skip_locked=True)
            .filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
            .filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lte=stale))
            .order_by("next_attempt_at")
            .values_list("id", flat=True)[:limit]
        )
        Delivery.objects.filter(id__in=ids).update(enqueued_at=now)
    if not ids:
        return 0
    published = deliveries_publish(ids, from_sweep=True)
    unpublished = set(ids) - set(published)
    if unpublished:
        Delivery.objects.filter(id__in=unpublished, enqueued_at=now).update(enqueued_at=None)
    return len(published)


# --- Delivery ---------------------------------------------------------------------------


def retry_delay_s(attempts: int) -> float:
    """Full jitter after attempt ``attempts``: ``uniform(0, min(cap, base * 2**(n-1)))``."""
    ceiling = min(
        settings.WEBHOOKS_RETRY_CAP_S, settings.WEBHOOKS_RETRY_BASE_S * 2 ** max(0, attempts - 1)
    )
    return random.uniform(0, ceiling)  # noqa: S311 - jitter, not crypto


# One breaker and fleet bulkhead per target host: the policy is a per-target template.
WEBHOOK = uses_dependency("webhook")


def target_dependency(url: str) -> str:
    """The breaker/bulkhead name of a target: ``webhook:<host>`` (``:<port>`` if given)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return f"{WEBHOOK}:{host}:{parts.port}" if parts.port else f"{WEBHOOK}:{host}"


@dataclass
class _Result:
    outcome: str  # succeeded, retry, dead, gone, forbidden
    status_code: int | None = None
    error: str = ""
    retry_after_s: float | None = None


def delivery_attempt(*, delivery_id: Any) -> str:
    """One attempt at one delivery; returns the outcome (``skipped`` if not ours to make)."""
    alias = current_alias()
    now = timezone.now()
    lease = uuid.uuid4()
    with transaction.atomic(using=alias):
        # The claim: due and pending, in one statement. A duplicate message, a concurrent
        # worker or a delivery that is not due finds nothing to update.
        claimed = Delivery.objects.filter(
            id=delivery_id, status=DeliveryStatus.PENDING, next_attempt_at__lte=now
        ).update(
            lease_id=lease,
            enqueued_at=None,
            attempts=F("attempts") + 1,
            last_attempt_at=now,
            # If this worker dies mid-call, the sweep sees the row due again after this.
            next_attempt_at=now + timedelta(seconds=settings.WEBHOOKS_LEASE_S),
            updated_at=now,
        )
    if not claimed:
        return "skipped"
    delivery = Delivery.objects.select_related("event", "endpoint").get(id=delivery_id)
    endpoint = delivery.endpoint
    if not endpoint.is_active:
        _record(delivery, lease, _Result("failed", error="endpoint disabled"), latency_ms=None)
        return "failed"
    try:
        check_target(endpoint.url, allowed=settings.WEBHOOKS_ALLOWED_TARGETS)
    except (ForbiddenTargetError, ResolutionTimeoutError) as exc:
        # Resolves elsewhere now (rebinding): forbidden. DNS too slow: a failed attempt.
        outcome = "retry" if isinstance(exc, ResolutionTimeoutError) else "forbidden"
        _record(delivery, lease, _Result(outcome, error=str(exc)), latency_ms=None)
        return outcome

    body = json.dumps(delivery.event.payload, separators=(",", ":"), sort_keys=True).encode()
    msg_id = str(delivery.event_id)
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": settings.WEBHOOKS_USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(
            secret=endpoint.secret, msg_id=msg_id, timestamp=timestamp, body=body
        ),
    }
    http = guarded_client(
        target_dependency(endpoint.url), allowed=settings.WEBHOOKS_ALLOWED_TARGETS
    )
    started = time.perf_counter()
    try:
        # One attempt: the schedule in Postgres is the retry layer (retry at one layer).
        response = http.request("POST", endpoint.url, data=body, headers=headers, retry=False)
    except BreakerOpenError as exc:
        jitter = random.uniform(0, settings.WEBHOOKS_BREAKER_JITTER_S)  # noqa: S311
        return _defer(delivery, lease, exc.retry_after_s + jitter, reason="breaker_open")
    except BulkheadFullError:
        delay = random.uniform(0.5, 1.0) * settings.WEBHOOKS_BULKHEAD_RETRY_S  # noqa: S311
        return _defer(delivery, lease, delay, reason="bulkhead_full")
    except DownstreamHTTPError as exc:  # 5xx and 429
        result = _Result(
            "retry",
            status_code=exc.downstream_status,
            error=str(exc),
            retry_after_s=exc.retry_after_s,
        )
    except DependencyUnavailableError as exc:  # connection refused, timeouts, reset
        cause = exc.__cause__ or exc
        result = _Result("retry", error=f"{type(cause).__name__}: {cause}"[:500])
    except FORBIDDEN_ADDRESS_ERRORS as exc:
        result = _Result("forbidden", error=f"address refused at connect time: {exc}")
    except REQUEST_ERRORS as exc:  # any other failure of the request itself
        result = _Result("retry", error=f"{type(exc).__name__}: {exc}"[:500])
    else:
        result = _classify(response.status_code, response.headers.get("Retry-After"))
    latency_ms = round((time.perf_counter() - started) * 1000)
    return _record(delivery, lease, result, latency_ms=latency_ms)


def _classify(status: int, retry_after: str | None) -> _Result:
    from resilience.http import parse_retry_after

    if 200 <= status < 300:
        return _Result("succeeded", status_code=status)
    if status == 410:
        return _Result("gone", status_code=status, error="410 Gone: endpoint disabled")
    if status in RETRYABLE_4XX:
        return _Result(
            "retry",
            status_code=status,
            error=f"answered {status}",
            retry_after_s=parse_retry_after(retry_after),
        )
    return _Result("dead", status_code=status, error=f"answered {status}: not retried")


def _defer(delivery: Delivery, lease: uuid.UUID, delay_s: float, *, reason: str) -> str:
    """Our own pattern refused the call: reschedule without spending an attempt."""
    now = timezone.now()
    Delivery.objects.filter(id=delivery.id, lease_id=lease, status=DeliveryStatus.PENDING).update(
        attempts=F("attempts") - 1,
        lease_id=None,
        next_attempt_at=now + timedelta(seconds=delay_s),
        updated_at=now,
    )
    metrics.DELIVERIES.labels("deferred").inc()
    logger.info(
        "webhook delivery deferred",
        extra={"delivery_id": str(delivery.id), "reason": reason, "delay_s": round(delay_s, 2)},
    )
    return "deferred"


def _record(
    delivery: Delivery, lease: uuid.UUID, result: _Result, *, latency_ms: int | None
) -> str:
    """Write the attempt's outcome under our claim, in one new transaction."""
    now = timezone.now()
    attempts = delivery.attempts  # already counts this attempt (the claim added it)
    outcome = result.outcome
    if outcome == "retry" and attempts >= settings.WEBHOOKS_MAX_ATTEMPTS:
        outcome = "dead"
        result.error = f"{result.error}; gave up after {attempts} attempts"
    fields: dict[str, Any] = {
        "lease_id": None,
        "last_status_code": result.status_code,
        "last_error": result.error[:500],
        "last_latency_ms": latency_ms,
        "updated_at": now,
    }
    if outcome == "succeeded":
        fields |= {"status": DeliveryStatus.SUCCEEDED, "delivered_at": now, "next_attempt_at": None}
    elif outcome == "retry":
        delay = retry_delay_s(attempts)
        if result.retry_after_s is not None:  # honour the receiver's Retry-After, capped
            delay = max(delay, min(result.retry_after_s, settings.WEBHOOKS_RETRY_AFTER_CAP_S))
        fields |= {"next_attempt_at": now + timedelta(seconds=delay)}
    elif outcome in {"dead", "forbidden"}:
        fields |= {"status": DeliveryStatus.DEAD, "dead_at": now, "next_attempt_at": None}
    else:  # gone (410), failed (endpoint disabled)
        fields |= {"status": DeliveryStatus.FAILED, "next_attempt_at": None}
    with transaction.atomic(using=current_alias()):
        updated = Delivery.objects.filter(
            id=delivery.id, lease_id=lease, status=DeliveryStatus.PENDING
        ).update(**fields)
        if not updated:  # our claim was taken over or the endpoint was disabled meanwhile
            return "superseded"
        DeliveryAttempt.objects.create(
            delivery_id=delivery.id,
            number=attempts,
            started_at=delivery.last_attempt_at or now,
            finished_at=now,
            next_attempt_at=fields.get("next_attempt_at"),
            outcome=outcome,
            status_code=result.status_code,
            error=result.error[:500],
            latency_ms=latency_ms,
        )
        if outcome == "gone":
            _disable(delivery.endpoint, reason="gone")
    metrics.DELIVERIES.labels(outcome).inc()
    if outcome != "retry":
        metrics.ATTEMPTS_PER_DELIVERY.labels(fields["status"]).observe(attempts)
    if outcome in {"dead", "forbidden"}:
        metrics.DEAD_LETTERED.inc()
        logger.warning(
            "webhook delivery dead-lettered",
            extra={"delivery_id": str(delivery.id), "error": result.error, "attempts": attempts},
        )
    log = logger.info if outcome in {"succeeded", "retry"} else logger.warning
    log(
        "webhook delivery attempt",
        extra={
            "delivery_id": str(delivery.id),
            "outcome": outcome,
            "attempt": attempts,
            "status_code": result.status_code,
            "latency_ms": latency_ms,
        },
    )
    return outcome


# --- Dead letters -------------------------------------------------------------------------

REPLAYABLE = (DeliveryStatus.DEAD, DeliveryStatus.FAILED)


def delivery_replay(*, delivery_id: Any, owner: Any = None) -> Delivery:
    """Put a dead-lettered (or failed) delivery back in the schedule, due now.

    The event id, and so the ``webhook-id``, stays the same: a receiver that did get an
    earlier attempt dedupes the replay.
    """
    with transaction.atomic(using=current_alias()):
        deliveries = Delivery.objects.select_for_update().select_related("endpoint")
        if owner is not None:
            deliveries = deliveries.filter(endpoint__owner=owner)
        delivery = deliveries.filter(id=delivery_id).first()
        if delivery is None:
            raise NotFoundError("No such delivery.")
        if delivery.status not in REPLAYABLE:
            raise WebhookReplayError(f"A {delivery.status} delivery cannot be replayed.")
        if not delivery.endpoint.is_active:
            raise WebhookReplayError("The endpoint is disabled; register it again.")
        _reschedule_now([delivery.id])
    delivery.refresh_from_db()
    return delivery


def deliveries_replay_dead(*, endpoint_id: Any = None, limit: int = 10_000) -> int:
    """Replay every dead-lettered delivery of active endpoints (of one, if given)."""
    with transaction.atomic(using=current_alias()):
        dead = Delivery.objects.filter(status=DeliveryStatus.DEAD, endpoint__is_active=True)
        if endpoint_id is not None:
            dead = dead.filter(endpoint_id=endpoint_id)
        ids = list(dead.select_for_update(skip_locked=True).values_list("id", flat=True)[:limit])
        _reschedule_now(ids)
    return len(ids)


def _reschedule_now(ids: list[Any]) -> None:
    if not ids:
        return
    now = timezone.now()
    Delivery.objects.filter(id__in=ids).update(
        status=DeliveryStatus.PENDING,
        attempts=0,
        next_attempt_at=now,
        dead_at=None,
        lease_id=None,
        enqueued_at=None,
        updated_at=now,
    )
    alias = current_alias()
    transaction.on_commit(lambda: deliveries_publish(ids), using=alias, robust=True)
    logger.info("webhook deliveries replayed", extra={"count": len(ids)})
