"""Health endpoints, /metrics and Django's error handlers, all answering JSON."""

from __future__ import annotations

import ipaddress
import sys
import time
from collections.abc import Callable

from django.conf import settings
from django.core.cache import cache
from django.db import connections
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse

from resilience.errors import Refusal
from resilience.problems import ProblemCode, error_response, problem_response


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Never touches a dependency."""
    return JsonResponse({"status": "ok"})


def _check_postgres() -> None:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_redis() -> None:
    # The cache client carries the cache's connect and socket timeouts (tens of ms).
    cache._cache.get_client(write=True).ping()


READINESS_CHECKS: dict[str, Callable[[], None]] = {
    "postgres": _check_postgres,
    "redis": _check_redis,
}


def _breaker_states() -> dict[str, dict[str, object]]:
    """Each breaker this process knows: its state and seconds until a trial call."""
    from resilience.breakers import known_breakers

    try:
        breakers = known_breakers()
    except Exception:  # noqa: BLE001 - readiness must answer even if the registry cannot
        return {}
    return {
        name: {"state": guard.current_state, "reopens_in_s": round(guard.open_remaining_s(), 1)}
        for name, guard in sorted(breakers.items())
    }


def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: can this instance give any documented answer (adr/0009)?

    Ready (200) while at least one of ``HEALTH_ANSWER_SOURCES`` answers: with Postgres
    down, reads are served stale from Redis and writes get a fast 503 with
    ``Retry-After``; with Redis down, the cache is bypassed and rate limits are per
    process. Both are documented answers, so the instance stays in rotation and the
    ``degraded`` list (and ``status: "degraded"``) says what is missing. Only when no
    source answers (every request would be refused, for instance this instance is cut
    off from both) is it 503, so a load balancer prefers instances that can answer.
    """
    checks = {}
    for name, check in READINESS_CHECKS.items():
        started = time.perf_counter()
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - any failure means "not available"
            checks[name] = {"ok": False, "error": type(exc).__name__}
        else:
            checks[name] = {"ok": True}
        checks[name]["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    sources = settings.HEALTH_ANSWER_SOURCES
    unavailable = {name for name, result in checks.items() if not result["ok"]}
    ready = any(checks[name]["ok"] for name in sources if name in checks)
    breakers = _breaker_states()
    # A breaker that is not closed means its dependency is served in a degraded mode
    # (stale reads, payments deferred, cache bypassed).
    tripped = {name for name, state in breakers.items() if state["state"] != "closed"}
    degraded = sorted(unavailable | tripped)
    body = {
        "status": ("degraded" if degraded else "ready") if ready else "unavailable",
        "degraded": degraded,
        "checks": checks,
        "breakers": breakers,
    }
    response = JsonResponse(body, status=200 if ready else 503)
    if not ready:
        response["Retry-After"] = str(settings.API_UNAVAILABLE_RETRY_AFTER_S)
    return response


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    return problem_response(request, status=400, code=ProblemCode.BAD_REQUEST)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    return problem_response(request, status=403, code=ProblemCode.PERMISSION_DENIED)


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    return problem_response(
        request, status=404, code=ProblemCode.NOT_FOUND, detail="No such resource."
    )


def server_error(request: HttpRequest) -> HttpResponse:
    """500, unless the error was a dependency being unavailable outside DRF (then 503).

    DRF views get this mapping from the exception handler; this covers the rest (admin,
    middleware). Django calls this handler inside its ``except`` block, so the exception
    is still in ``sys.exc_info()``.
    """
    from common.exception_handler import translate_exception

    exc = sys.exc_info()[1]
    translated = translate_exception(exc) if isinstance(exc, Exception) else exc
    if isinstance(translated, Refusal):
        return error_response(request, translated)
    return problem_response(request, status=500, code=ProblemCode.SERVER_ERROR)


def metrics(request: HttpRequest) -> HttpResponse:
    """``/metrics`` for Prometheus, only to clients in ``METRICS_ALLOWED_NETWORKS``.

    ``None`` (development, tests) serves everyone. Otherwise the client address is the
    one the rate limiter trusts (``REMOTE_ADDR``, or ``X-Forwarded-For`` only when the
    peer is one of ``RATELIMIT_TRUSTED_PROXIES``), so a public request relayed by our own
    gateway is judged by its real origin, not by the gateway's private address. Anyone
    else gets the same 404 as an unknown path: the endpoint is not advertised.
    """
    from common.metrics_export import metrics_view

    allowed = settings.METRICS_ALLOWED_NETWORKS
    if allowed is not None and not _in_networks(request, allowed):
        return not_found(request, Http404())
    return metrics_view(request)


def _in_networks(request: HttpRequest, networks: list[str]) -> bool:
    from resilience.ratelimit.client_ip import resolve_client_ip
    from resilience.ratelimit.config import get_config

    address = resolve_client_ip(
        request.META.get("REMOTE_ADDR", ""),
        request.META.get("HTTP_X_FORWARDED_FOR", ""),
        get_config().trusted_proxies,
    )
    if address is None:
        return False
    for network in networks:
        parsed = ipaddress.ip_network(network, strict=False)
        if parsed.version == address.version and address in parsed:
            return True
    return False
