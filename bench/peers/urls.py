"""The peers' endpoints: one order-creating DRF view behind each idempotency library, and
one trivial view behind each rate limiter at the same policy (bench/peers/settings.py).

Never part of the product: only the benchmark's servers (and its CI test) route here.
"""

from __future__ import annotations

import functools
from typing import Any

from django.conf import settings
from django.db import transaction
from django.urls import path
from django.utils.decorators import method_decorator
from django_ratelimit.decorators import ratelimit
from idempotency_key.decorators import idempotency_key
from rest_framework import serializers
from rest_framework.exceptions import Throttled
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from orders.models import Order, OrderStatus
from resilience.idempotency import STARTED, idempotent
from resilience.ratelimit.throttles import TokenBucketThrottle

CRASH_HEADER = "X-Bench-Crash"  # "after-order": fail between creating and paying


class BenchCrashError(RuntimeError):
    """The process "died" after the order was committed and before it was paid."""


# --- Idempotency: the same order-creating view, protected four ways -----------------------
class OrderInput(serializers.Serializer):
    currency = serializers.ChoiceField(choices=["EUR", "USD"])
    amount = serializers.IntegerField(min_value=1)


def create_order(request: Request) -> Response:
    """Phase 1 creates the order; phase 2 marks it paid. Resumes from ``request.idempotency``
    when our decorator provides one; the peers have no such notion and run from the top."""
    data = OrderInput(data=request.data)
    data.is_valid(raise_exception=True)
    ctx = getattr(request, "idempotency", None)
    if ctx is not None and ctx.recovery_point != STARTED:
        order = Order.objects.get(id=ctx.resource_id)
    else:
        with transaction.atomic():
            order = Order.objects.create(
                owner=request.user,
                currency=data.validated_data["currency"],
                total_amount=data.validated_data["amount"],
            )
            if ctx is not None:
                ctx.advance("order_created", resource_id=order.id)
    if request.headers.get(CRASH_HEADER) == "after-order":
        raise BenchCrashError("crashed after creating the order")
    if order.status == OrderStatus.PENDING:
        with transaction.atomic():
            Order.objects.filter(id=order.id).update(status=OrderStatus.PAID)
            if ctx is not None:
                ctx.advance("payment_authorized")
        order.refresh_from_db()
    body = {"id": str(order.id), "status": order.status, "total_amount": order.total_amount}
    return Response(body, status=201, headers={"Location": f"/api/v1/orders/{order.id}"})


class UnprotectedOrderApi(APIView):
    throttle_classes: list = []

    def post(self, request: Request) -> Response:
        return create_order(request)


class OursOrderApi(UnprotectedOrderApi):
    @idempotent(scope="bench.peers.orders")
    def post(self, request: Request) -> Response:
        return create_order(request)


# --- Rate limiting: the same trivial view, the same policy --------------------------------
class PlainApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []

    def get(self, request: Request) -> Response:
        return Response({"ok": True})


def _ours(policy: str) -> type[APIView]:
    throttle = type(f"Throttle_{policy}", (TokenBucketThrottle,), {"policies": (policy,)})
    return type(f"Ours_{policy}", (PlainApi,), {"throttle_classes": [throttle]})


@functools.cache
def _limits_limiter(strategy: str) -> Any:
    from limits import storage, strategies

    url = getattr(settings, "PEERS_LIMIT_REDIS_URL", settings.REDIS_URL)
    store = storage.storage_from_string(url)
    return {
        "moving": strategies.MovingWindowRateLimiter,
        "fixed": strategies.FixedWindowRateLimiter,
    }[strategy](store)


def _rate(never: bool) -> str:
    """The compared policy's rate, read per request (the CI test lowers it)."""
    return "1000000000/second" if never else f"{peers_setting('PEERS_RATE')}/second"


def peers_setting(name: str) -> Any:
    defaults = {"PEERS_RATE": 100, "PEERS_KEY_PREFIX": "peers"}
    return getattr(settings, name, defaults.get(name))


def _limits(strategy: str, never: bool) -> type[APIView]:
    """``limits`` used as slowapi uses it: ``hit()`` per request, keyed by client IP."""
    from limits import parse

    class LimitsThrottle(BaseThrottle):
        def allow_request(self, request: Request, view: APIView) -> bool:
            rate = _rate(never)
            namespace = f"{peers_setting('PEERS_KEY_PREFIX')}-limits-{strategy}-{never}"
            limiter = _limits_limiter(strategy)
            if limiter.hit(parse(rate), namespace, self.get_ident(request)):
                return True
            raise Throttled(wait=1)

    return type(f"Limits_{strategy}", (PlainApi,), {"throttle_classes": [LimitsThrottle]})


def _django_ratelimit(never: bool) -> type[APIView]:
    def rate(group: str, request: Any) -> str:
        return "1000000000/s" if never else f"{peers_setting('PEERS_RATE')}/s"

    class DjangoRatelimitApi(PlainApi):
        # The cache's KEY_PREFIX (settings) makes the counters unique per run.
        @method_decorator(ratelimit(group=f"peers-djrl-{never}", key="ip", rate=rate, block=True))
        def get(self, request: Request) -> Response:
            return Response({"ok": True})

    return DjangoRatelimitApi


# name -> (view at the compared policy, the same limiter never refusing)
RATE_LIMITED = {
    "ours": (_ours("peers_policy"), _ours("peers_never")),
    "ours-closed": (_ours("peers_policy_closed"), _ours("peers_never")),
    "limits-moving": (_limits("moving", False), _limits("moving", True)),
    "limits-fixed": (_limits("fixed", False), _limits("fixed", True)),
    "django-ratelimit": (_django_ratelimit(False), _django_ratelimit(True)),
}
IDEMPOTENT = {
    "unprotected": UnprotectedOrderApi.as_view(),
    "ours": OursOrderApi.as_view(),
    # Protected by drf-idempotency's middleware in the servers started for it (settings).
    "drf-idempotency": UnprotectedOrderApi.as_view(),
    # Its middleware reads the marker from the view function the URL resolves to.
    "django-idempotency-key": idempotency_key(UnprotectedOrderApi.as_view()),
}

urlpatterns = [
    path("healthz", PlainApi.as_view()),
    path("peers/rl/plain", PlainApi.as_view()),
    *[path(f"peers/idem/{name}", view) for name, view in IDEMPOTENT.items()],
    *[path(f"peers/rl/{name}", views[0].as_view()) for name, views in RATE_LIMITED.items()],
    *[path(f"peers/rl/{name}/never", views[1].as_view()) for name, views in RATE_LIMITED.items()],
]
